"""YAML for recipes, plans and search spaces, read strictly: no Python objects (safe loading), no duplicate keys
(the second would silently win), no aliases of lists or mappings (a few lines of them expand to gigabytes, the
"billion laughs"), and a bounded size; numbers written as 1e-3 are numbers, as users write them."""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_NODES = 20_000  # a recipe has a few hundred; anything near this is not a recipe
FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)$")  # 1e-3, 5E4: YAML 1.1 leaves these strings


class YamlProblem(ValueError):
    """The text is not a recipe-shaped YAML document; the message says why in one line."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases of collections, and counts nodes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            anchored = self.anchors.get(event.anchor)
            if isinstance(anchored, (yaml.MappingNode, yaml.SequenceNode)):
                raise YamlProblem(f"line {event.start_mark.line + 1}: the alias *{event.anchor} repeats a list or mapping; "
                                  "write the values out (aliases of collections are refused: a few of them can expand "
                                  "to gigabytes)")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlProblem(f"more than {MAX_NODES} values: this is not a recipe")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                raise YamlProblem(f"line {key_node.start_mark.line + 1}: {key!r} cannot be a key") from None
            if duplicate:
                raise YamlProblem(f"line {key_node.start_mark.line + 1}: the key {key!r} appears twice in one mapping; "
                                  "keep one (YAML would silently use the last)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """One YAML document, strictly (see the module's docstring); YamlProblem or yaml.YAMLError otherwise."""
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
