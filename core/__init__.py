"""Deep Image Matting (Xu et al., CVPR 2017) in PyTorch.

Conventions used everywhere in this package:

* Images are read by OpenCV as BGR uint8 H×W×3 and only become RGB at the
  network boundary (``core.preprocess.make_input``).
* Trimaps are uint8 H×W with 0 (background), 128 (unknown), 255 (foreground);
  the network sees ``trimap / 255`` as its 4th channel, so unknown is 128/255.
* Alphas are float in [0, 1] inside the code and uint8 0..255 on disk.
* Network inputs have height and width that are multiples of 32.
"""

__version__ = "1.0.0"
