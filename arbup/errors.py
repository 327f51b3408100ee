"""Kinds of step failure, shared by the activities that raise them and the
workflow whose retry policy tells the retryable ones from the rest."""


class ErrorKind:
    """ApplicationError types the workflow and operators see."""

    HOST_UNREACHABLE = "HostUnreachable"
    HOST_KEY_NOT_VERIFIED = "HostKeyNotVerified"
    PERMISSION_DENIED = "PermissionDenied"
    CREDENTIAL_MISSING = "CredentialMissing"
    NO_EXIT_STATUS = "NoExitStatus"
    COMMAND_FAILED = "CommandFailed"
    WRONG_OS = "WrongOperatingSystem"
    WRONG_ARCH = "WrongArchitecture"
    PACKAGE_MISSING = "PackageMissing"
    PACKAGE_MISMATCH = "PackageMismatch"
    TARGET_NOT_NEWER = "TargetNotNewer"
    INSUFFICIENT_DISK = "InsufficientDisk"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    INSTALL_FAILED = "InstallFailed"
    STOP_FAILED = "StopFailed"
    START_FAILED = "StartFailed"


# Errors that another attempt cannot fix; the workflow's retry policy lists them too.
NON_RETRYABLE = (
    ErrorKind.HOST_KEY_NOT_VERIFIED,
    ErrorKind.PERMISSION_DENIED,
    ErrorKind.CREDENTIAL_MISSING,
    ErrorKind.WRONG_OS,
    ErrorKind.WRONG_ARCH,
    ErrorKind.PACKAGE_MISSING,
    ErrorKind.PACKAGE_MISMATCH,
    ErrorKind.TARGET_NOT_NEWER,
    ErrorKind.INSUFFICIENT_DISK,
    ErrorKind.INSTALL_FAILED,
)
