"""What a reader sees in a status page: the text of each table's body rows, and elements by id
(their tag, class and text). For the unit tests of the rendering and the browser tests alike."""

from html.parser import HTMLParser


class Page(HTMLParser):
    """What a reader sees: the text of each table's body rows, and elements by id."""

    def __init__(self, markup: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.ids: dict[str, dict] = {}
        self._table = None
        self._in_body = False
        self._cell = None
        self._id_stack: list = []
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = {"tag": tag, "class": attrs.get("class", ""), "text": ""}
            self._id_stack.append((tag, attrs["id"]))
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[self._table].append([])
        elif tag == "td" and self._in_body:
            self._cell = ""

    def handle_endtag(self, tag):
        if self._id_stack and self._id_stack[-1][0] == tag:
            self._id_stack.pop()
        if tag == "td" and self._cell is not None:
            self.tables[self._table][-1].append(self._cell.strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        for _tag, element_id in self._id_stack:
            self.ids[element_id]["text"] += data
