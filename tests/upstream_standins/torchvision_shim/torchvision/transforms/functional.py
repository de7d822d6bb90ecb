"""`crop(image, top, left, height, width)` on PIL images."""


def crop(image, top, left, height, width):
    return image.crop((left, top, left + width, top + height))
