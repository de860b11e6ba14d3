"""AlexNet as the Paddle reproduction guide's worked example (AlexNet-Prod) sets up its Step 4:
torchvision's AlexNet against its paddle port, each written in its own framework; SGD with
momentum 0.9, lr 0.00125, weight decay 1e-4 and StepLR(step_size 30, gamma 0.1), built by each
side's own training code (optimizer_torch / optimizer_paddle). The layers are AlexNet's; the
widths and the image are scaled down (WIDTH, IMAGE) so the test runs in seconds on a CPU.

BUG (environment REPROD_TEST_BUG) changes the paddle side only:
  weight_decay   the paddle optimizer is built without weight_decay (a 1e-4 coupled L2 decay is a
                 small fraction of every update, never of the weight)
  momentum       paddle's momentum 0.899 for 0.9 (the updates from step 1 on, by a fraction of a percent)
  clip           paddle clips the gradients' global norm at 0.675: 0.8 % off the first step's (0.68)
  dropout_p      the classifier's second dropout at p 0.2 instead of 0.5
"""
import os

import numpy as np

BUG = os.environ.get("REPROD_TEST_BUG", "")
WIDTH = 8  # torchvision's channels divided by this
CLASSES, IMAGE, BATCH = 10, 96, 4
LR, MOMENTUM, WEIGHT_DECAY, STEP_SIZE, GAMMA = 0.00125, 0.9, 1e-4, 30, 0.1
C1, C2, C3, C4, HIDDEN = 64 // WIDTH, 192 // WIDTH, 384 // WIDTH, 256 // WIDTH, 4096 // WIDTH


def build_torch():
    import torch
    from torch import nn

    class AlexNet(nn.Module):
        def __init__(self, num_classes=CLASSES, dropout=0.5):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, C1, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(C1, C2, kernel_size=5, padding=2), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
                nn.Conv2d(C2, C3, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(C3, C4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(C4, C4, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2),
            )
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(p=dropout), nn.Linear(C4 * 6 * 6, HIDDEN), nn.ReLU(inplace=True),
                nn.Dropout(p=dropout), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True),
                nn.Linear(HIDDEN, num_classes),
            )

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    return AlexNet()


def build_paddle():
    import paddle
    from paddle import nn

    class AlexNet(nn.Layer):
        def __init__(self, num_classes=CLASSES, dropout=0.5):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2D(3, C1, kernel_size=11, stride=4, padding=2), nn.ReLU(),
                nn.MaxPool2D(kernel_size=3, stride=2),
                nn.Conv2D(C1, C2, kernel_size=5, padding=2), nn.ReLU(),
                nn.MaxPool2D(kernel_size=3, stride=2),
                nn.Conv2D(C2, C3, kernel_size=3, padding=1), nn.ReLU(),
                nn.Conv2D(C3, C4, kernel_size=3, padding=1), nn.ReLU(),
                nn.Conv2D(C4, C4, kernel_size=3, padding=1), nn.ReLU(),
                nn.MaxPool2D(kernel_size=3, stride=2),
            )
            self.avgpool = nn.AdaptiveAvgPool2D((6, 6))
            second = 0.2 if BUG == "dropout_p" else dropout
            self.classifier = nn.Sequential(
                nn.Dropout(p=dropout), nn.Linear(C4 * 6 * 6, HIDDEN), nn.ReLU(),
                nn.Dropout(p=second), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                nn.Linear(HIDDEN, num_classes),
            )

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(paddle.flatten(x, 1))

    return AlexNet()


def optimizer_torch(model, total_steps):
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_SIZE, gamma=GAMMA)


def optimizer_paddle(model, total_steps):
    import paddle

    schedule = paddle.optimizer.lr.StepDecay(LR, step_size=STEP_SIZE, gamma=GAMMA)
    decay = {} if BUG == "weight_decay" else {"weight_decay": WEIGHT_DECAY}
    clip = {"grad_clip": paddle.nn.ClipGradByGlobalNorm(0.675)} if BUG == "clip" else {}
    momentum = 0.899 if BUG == "momentum" else MOMENTUM
    optimizer = paddle.optimizer.Momentum(learning_rate=schedule, momentum=momentum, parameters=model.parameters(),
                                          **decay, **clip)
    return optimizer, schedule


def make_batch(rng, step):
    return {"image": rng.standard_normal((BATCH, 3, IMAGE, IMAGE)).astype(np.float32),
            "label": rng.integers(0, CLASSES, (BATCH,)).astype(np.int64)}
