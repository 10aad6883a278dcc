"""The demo vendor: a (possibly backdoored) classifier served over HTTP like real vendor APIs."""

from service.demo.vendor_app import create_vendor_app, run_demo_vendor

__all__ = ["create_vendor_app", "run_demo_vendor"]
