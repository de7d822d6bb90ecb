"""A folder of training images and their captions, as a dataset of `{"image": path, "prompt": text}`.

Captions come from one of two places, as in the usual training-folder formats:

- `metadata.jsonl` at the top of the folder (the diffusers / 🤗 datasets `imagefolder` format):
  one JSON object per line with `file_name` (relative to the folder) and `text`;
- otherwise a `.txt` file beside each image, with the same stem (`dog1.png` → `dog1.txt`).

Images are every file with an image extension under the folder (subfolders included, hidden ones
skipped), in sorted order of their relative paths, so the order, and therefore a
`TrainingSchedule` built on it, does not depend on the file system. An image without a caption, a
caption without an image and an unreadable image are errors that name the file.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> scratch = tempfile.TemporaryDirectory()
    >>> root = Path(scratch.name)
    >>> Image.new("RGB", (40, 30)).save(root / "a.png")
    >>> _ = (root / "a.txt").write_text("a photo of sks dog\\n")
    >>> folder = ImageFolder(root)
    >>> folder[0]["prompt"], folder.image_sizes()
    ('a photo of sks dog', [(30, 40)])
    >>> scratch.cleanup()
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .images import load_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
METADATA = "metadata.jsonl"


class ImageFolderError(ValueError):
    """A training folder is missing captions or images, or its metadata is malformed."""


def _image_files(root: Path) -> list[Path]:
    files = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(relative)
    return sorted(files, key=lambda p: p.as_posix())


def _read_metadata(root: Path, caption_column: str) -> dict[str, str]:
    captions: dict[str, str] = {}
    path = root / METADATA
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ImageFolderError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(record, dict) or "file_name" not in record or caption_column not in record:
            raise ImageFolderError(f"{where}: each line needs 'file_name' and {caption_column!r}")
        name = Path(record["file_name"]).as_posix()
        if not (root / name).is_file():
            raise ImageFolderError(f"{where}: {record['file_name']!r} does not exist in {root}")
        if name in captions:
            raise ImageFolderError(f"{where}: {record['file_name']!r} is listed twice")
        if not isinstance(record[caption_column], str):
            raise ImageFolderError(f"{where}: {caption_column!r} must be a string")
        captions[name] = record[caption_column].strip()
    return captions


class ImageFolder(Dataset):
    """Images and captions from a folder; item `i` is `{"image": str path, "prompt": caption}`.

    Args:
        root: the folder.
        caption_column: the caption field of `metadata.jsonl` (default `"text"`).
        default_prompt: the caption of images that have none (a DreamBooth instance prompt);
            without it, an image without a caption is an error.
    """

    def __init__(self, root: str | os.PathLike, *, caption_column: str = "text", default_prompt: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        files = _image_files(self.root)
        if not files:
            raise ImageFolderError(f"{self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        metadata = (self.root / METADATA).is_file()
        captions = _read_metadata(self.root, caption_column) if metadata else {}
        self.files, self.prompts = [self.root / f for f in files], []
        for relative, path in zip(files, self.files):
            caption = captions.get(relative.as_posix()) if metadata else _sidecar_caption(path)
            if caption is None:
                caption = default_prompt
            if caption is None:
                where = f"no line in {self.root / METADATA}" if metadata else f"no {path.with_suffix('.txt').name} beside it"
                raise ImageFolderError(f"{path} has no caption ({where}); add one, or give a default prompt")
            self.prompts.append(caption)
        self._sizes: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": str(self.files[index]), "prompt": self.prompts[index]}

    def image_sizes(self) -> list[tuple[int, int]]:
        """`(height, width)` of every image as the collator will see it (EXIF orientation applied).

        Every image is decoded once, so a truncated or unreadable file fails here, named, rather
        than in the middle of a run.
        """
        if self._sizes is None:
            self._sizes = []
            for path in self.files:
                width, height = load_image(path).size
                self._sizes.append((height, width))
        return list(self._sizes)


def _sidecar_caption(image: Path) -> str | None:
    text = image.with_suffix(".txt")
    return text.read_text(encoding="utf-8").strip() if text.is_file() else None
