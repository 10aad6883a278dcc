"""The headers of a relayed `/targets` call (`service.shadow.peers`), defined once for the relay and the API.

A leaf: no imports, so `service.api.security` (which keeps them from the vendor) and the relay share them
without either importing the other.
"""

from __future__ import annotations

API_KEY_HEADER = "X-API-Key"  # the gateway's key header (service.api.security); a relayed call carries the key in it
RELAYED_BY_HEADER = "X-Zipgate-Relayed-By"  # the relaying process's id: the call is not relayed again
RELAYED_SOURCE_HEADER = "X-Zipgate-Relayed-Source"  # who named the label on the relaying gateway
