"""An approximate radix tree over prompt text shared by all endpoints (SGLang/vLLM router style).

Every node holds an edge label (a string) and, per endpoint ("tenant") that has been sent a
prompt through it, the last access time. ``match`` walks the prompt and reports the matched
length and the most recently active tenant of the deepest node reached; ``insert`` adds a
prompt for one tenant; ``evict`` removes least-recently-used leaves of each tenant until its
character count is at most a bound. Token ids are mapped to characters (one code point per
id) so the same tree serves token prompts.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from modelfleet.policy.types import EndpointId


def tokens_as_text(ids: Sequence[int]) -> str:
    """One code point per token id (ids < 0x110000), so string prefixes are token prefixes."""
    arr = np.asarray(ids, dtype=np.uint32)
    return arr.tobytes().decode("utf-32-le", errors="surrogatepass")


@dataclass(eq=False)
class _Node:
    text: str
    parent: _Node | None
    children: dict[str, _Node] = field(default_factory=dict)
    tenants: dict[EndpointId, float] = field(default_factory=dict)


def _common(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    # compare in chunks first (fast path for long shared prefixes)
    step = 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


class RadixTree:
    def __init__(self) -> None:
        self.root = _Node("", None)
        self.size: dict[EndpointId, int] = {}

    def match(
        self, text: str, tenants: Collection[EndpointId] | None = None
    ) -> tuple[int, EndpointId | None]:
        """(matched characters, tenant) for the deepest node held by an allowed tenant."""
        node = self.root
        pos = 0
        best_len = 0
        best: EndpointId | None = None
        while pos < len(text):
            child = node.children.get(text[pos])
            if child is None:
                break
            k = _common(child.text, text[pos:])
            allowed = [t for t in child.tenants if tenants is None or t in tenants]
            if not allowed:
                break
            pos += k
            best_len = pos
            best = max(allowed, key=lambda t: (child.tenants[t], t))
            if k < len(child.text):
                break
            node = child
        return best_len, best

    def insert(self, text: str, tenant: EndpointId, now: float) -> None:
        node = self.root
        pos = 0
        node.tenants[tenant] = now
        while pos < len(text):
            child = node.children.get(text[pos])
            if child is None:
                leaf = _Node(text[pos:], node)
                leaf.tenants[tenant] = now
                node.children[text[pos]] = leaf
                self.size[tenant] = self.size.get(tenant, 0) + len(leaf.text)
                return
            k = _common(child.text, text[pos:])
            if k < len(child.text):
                # split child at k
                mid = _Node(child.text[:k], node, tenants=dict(child.tenants))
                child.text = child.text[k:]
                child.parent = mid
                mid.children[child.text[0]] = child
                node.children[mid.text[0]] = mid
                child = mid
            if tenant not in child.tenants:
                self.size[tenant] = self.size.get(tenant, 0) + len(child.text)
            child.tenants[tenant] = now
            pos += k
            node = child

    def evict(self, max_size: int) -> None:
        """Drop LRU leaves of every tenant whose character count exceeds ``max_size``."""
        for tenant, size in list(self.size.items()):
            if size <= max_size:
                continue
            heap: list[tuple[float, int, _Node]] = []
            for n in self._tenant_leaves(tenant):
                heapq.heappush(heap, (n.tenants[tenant], id(n), n))
            while size > max_size and heap:
                _, _, n = heapq.heappop(heap)
                if tenant not in n.tenants:
                    continue
                del n.tenants[tenant]
                size -= len(n.text)
                parent = n.parent
                if not n.tenants and parent is not None:
                    parent.children.pop(n.text[0], None)
                if (
                    parent is not None
                    and parent is not self.root
                    and tenant in parent.tenants
                    and not any(tenant in c.tenants for c in parent.children.values())
                ):
                    heapq.heappush(heap, (parent.tenants[tenant], id(parent), parent))
            self.size[tenant] = size

    def _tenant_leaves(self, tenant: EndpointId) -> list[_Node]:
        out: list[_Node] = []
        stack = [self.root]
        while stack:
            n = stack.pop()
            kids = [c for c in n.children.values() if tenant in c.tenants]
            if not kids and n is not self.root and tenant in n.tenants:
                out.append(n)
            stack.extend(kids)
        return out
