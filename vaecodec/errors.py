"""Every failure a user can cause is a ``VaecodecError``: the CLI prints its message as one
line and exits 1, and API users catch one class instead of guessing at torch or zlib errors."""


class VaecodecError(Exception):
    """Base class: the message is written for a person, not a developer."""


class FormatError(VaecodecError):
    """The bytes are not a valid .vae file (wrong magic, truncated, corrupt, bad field)."""


class UnsupportedVersionError(FormatError):
    """A .vae file from a format version this build cannot read."""


class ChecksumError(FormatError):
    """The file's CRC32 does not match its contents: it was damaged after encoding."""


class WeightsMismatchError(VaecodecError):
    """The file was encoded with other weights than the ones loaded."""


class ImageTooLargeError(VaecodecError):
    """Dimensions beyond the limits the codec accepts (they bound memory use)."""


class InputImageError(VaecodecError):
    """The input could not be read as an image."""


class WeightsError(VaecodecError):
    """A weights file that is missing, unreadable, or of another architecture."""


class DecodeMismatchError(FormatError):
    """The decoded symbols' checksum differs from the encoder's: writing the image would
    mean writing garbage, so decoding stops."""
