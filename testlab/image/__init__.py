"""Guest images for libvirt hosts: a minimal Debian with the testlab agent, built from packages.

`build_image` makes one (`testlab image build`), `load_image` reads one (`testlab vm provision`).
"""

from testlab.image.build import build_image
from testlab.image.layout import Image, load_image, read_image
from testlab.image.recipe import Recipe, image_key, recipe_key
from testlab.image.tools import ImageError

__all__ = [
    "Image",
    "ImageError",
    "Recipe",
    "build_image",
    "image_key",
    "load_image",
    "read_image",
    "recipe_key",
]
