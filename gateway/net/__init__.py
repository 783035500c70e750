"""The network: the receiving side (:mod:`~gateway.net.scp`) and the sending client (:mod:`~gateway.net.scu`)."""
