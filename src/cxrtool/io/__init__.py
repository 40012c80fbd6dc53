"""Input: decoding DICOM/PNG/JPEG into float images, and discovering files in an archive."""

from cxrtool.io.decode import DecodedImage, decode_image, is_dicom_file
from cxrtool.io.discover import ArchiveFile, discover_archive

__all__ = ["ArchiveFile", "DecodedImage", "decode_image", "discover_archive", "is_dicom_file"]
