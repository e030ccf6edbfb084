"""copd: the command line, settings and HTTP client shared by the control plane's parts."""

__version__ = "0.1.0"
