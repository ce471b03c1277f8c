# twistd finds `twistd fws` here. Keep this file import-light; the code is in fws.tap.
from fws.plugin_maker import fws_service_maker

__all__ = ["fws_service_maker"]
