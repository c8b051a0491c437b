"""A store-gateway in another process, read over its internal endpoints
(handlers/storegateway.StoreGatewayClientHandlers): the same calls as the in-process
StoreGatewayReader (a components/sources.Source), each optionally limited to the block ULIDs
`blocks` this store-gateway should answer for. Transport, timeouts and error causes are the
remote ingester client's (components/ingester_remote.py): an unreachable or failing instance is
UNAVAILABLE, so the querier can retry the blocks elsewhere."""
import json
from typing import Any, Collection, Sequence


from urdar.components.ingester_remote import (RemoteIngesterClient, decode_series, encode_hints,
                                              encode_matchers)
from urdar.components.sources import BlocksOnly
from urdar.promql.selectors import SelectHints


class RemoteStoreGatewayClient(BlocksOnly, RemoteIngesterClient):
    path = "/store-gateway/client/"

    def _body(self, matchers: Sequence[Any], hints: SelectHints,
              blocks: Collection[str] | None, **extra: Any) -> dict[str, Any]:
        doc = dict(encode_hints(hints), matchers=encode_matchers(matchers), **extra)
        if blocks is not None:
            doc["blocks"] = sorted(blocks)
        return doc

    def select(self, tenant: str, matchers: Sequence[Any], hints: SelectHints,
               blocks: Collection[str] | None = None) -> Any:
        d = self._json("select", tenant, self._body(matchers, hints, blocks))
        return d.addCallback(self._decode, decode_series)

    def label_names(self, tenant: str, matchers: Sequence[Any], hints: SelectHints,
                    blocks: Collection[str] | None = None) -> Any:
        return self._json("label_names", tenant, self._body(matchers, hints, blocks)).addCallback(
            json.loads)

    def label_values(self, tenant: str, name: str, matchers: Sequence[Any], hints: SelectHints,
                     blocks: Collection[str] | None = None) -> Any:
        return self._json("label_values", tenant,
                          self._body(matchers, hints, blocks, name=name)).addCallback(json.loads)
