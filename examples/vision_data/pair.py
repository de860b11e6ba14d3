"""vision_data: an image pipeline's Step 2 (the data alone: no model yet). Both sides decode the same
images (synthetic here, made from each index: nothing is read or downloaded), resize them to 32 x
32 (bilinear), flip half of them at random and normalize with ImageNet's mean and std. The paddle
side uses paddle.vision.transforms; the torch side writes the same steps with torch ops (as a
port of torchvision's transforms would). The flip draws from Python's random, which each worker
seeds from [data] seed before every pass: the same items flip on both sides.

NORMALIZE_PADDLE holds the paddle side's mean and std: give them in BGR order (a cv2 habit) and the
data check names the channels that differ.
"""

import random

import numpy as np
import paddle
import torch

SIZES = {"train": 24, "eval": 10}
SIDE, FLIP = 32, 0.5
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, in RGB order
NORMALIZE_PADDLE = {"mean": MEAN, "std": STD}


def image(split: str, index: int) -> np.ndarray:
    """An HWC uint8 RGB image of 40 x 48 pixels, the same on both sides for one (split, index)."""
    rng = np.random.default_rng([("train", "eval").index(split), index])
    return rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)


class TorchImages(torch.utils.data.Dataset):
    def __init__(self, split):
        self.split = split

    def __len__(self):
        return SIZES[self.split]

    def __getitem__(self, i):
        x = torch.from_numpy(image(self.split, i)).permute(2, 0, 1).float() / 255  # ToTensor
        x = torch.nn.functional.interpolate(x[None], size=(SIDE, SIDE), mode="bilinear", align_corners=False)[0]
        if random.random() < FLIP:  # RandomHorizontalFlip draws from Python's random
            x = x.flip(-1)
        x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
        return x, i % 10


def data_torch(split):
    return torch.utils.data.DataLoader(TorchImages(split), batch_size=4)


class PaddleImages(paddle.io.Dataset):
    def __init__(self, split):
        import paddle.vision.transforms as T

        self.split = split
        self.transform = T.Compose([T.ToTensor(), T.Resize((SIDE, SIDE)), T.RandomHorizontalFlip(FLIP),
                                    T.Normalize(**NORMALIZE_PADDLE)])

    def __len__(self):
        return SIZES[self.split]

    def __getitem__(self, i):
        return self.transform(image(self.split, i)), i % 10


def data_paddle(split):
    return paddle.io.DataLoader(PaddleImages(split), batch_size=4)
