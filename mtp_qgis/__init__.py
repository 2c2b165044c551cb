"""MTP for QGIS: run remote-sensing foundation models from QGIS through a local backend."""


def classFactory(iface):  # noqa: N802 (name required by QGIS)
    from .plugin import MtpPlugin

    return MtpPlugin(iface)
