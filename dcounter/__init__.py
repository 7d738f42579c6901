"""dcounter: a distributed counter served over HTTP.

Increments are applied and acknowledged at the node that receives them and replicated
asynchronously to every peer; every event has a unique id, so re-deliveries never double count.
"""

__version__ = "0.1.0"
PROTOCOL = 2  # what peers send each other; see protocol.py for the upgrade rule
