"""The Redis protocol (RESP2, RESP3) on a second port of a node: ``--resp-port``."""

from kvtwist.resp.protocol import RespConnection, RespFactory

__all__ = ["RespConnection", "RespFactory"]
