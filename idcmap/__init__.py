"""idcmap: invasive ductal carcinoma (IDC) regions on H&E whole-slide images."""

__version__ = "0.1.0"
