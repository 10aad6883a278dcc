"""`/ui`: a small server-rendered web page to look at what the gateway does (try an image, shadow captures)."""
