"""Weight mapping: which torch module is which paddle module, and how each torch tensor becomes a
paddle one (layout, names, fused projections), for the initial weights and for checkpoints.

  modtable.py     the module tables' vocabulary: signatures, tensor names, types
  pairing.py      pairing the modules (user renames, same name, call order, type order)
  dropouts.py     dropout sites of both sides, paired, with their probabilities
  weights.py      per-tensor conversion and the plan (weight_map.txt)
  layout.py       square weights' layout, measured on the traced forward
  identify.py     what each torch tensor became under the pair's own torch_to_paddle, by value
  checkpoints.py  reading, converting and writing .pt / .pdparams through the workers

May import: harness.errors, harness.safety, harness.workers
"""
