from harness.cli import main

if __name__ == "__main__":  # guarded: spawned workers re-import __main__
    main()
