"""The one error of the export stage."""


class ExportValidationError(ValueError):
    """An exported file is not what it claims to be (not fully int8, unusable outputs, ...)."""
