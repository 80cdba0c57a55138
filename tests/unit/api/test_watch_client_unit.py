from lobby.client import _EventParser
from lobby.ctl import event_line, parse_args


def feed(parser, text):
    return [e for line in text.split("\n") if (e := parser.feed(line)) is not None]


def test_event_parser_reads_events_comments_and_ids():
    parser = _EventParser()
    events = feed(
        parser,
        'id: 7\nevent: join\ndata: {"hostname": "a", "labels": [], "index": 7}\n\n'
        ": keep-alive\n\nevent: reset\ndata: {}\n\n",
    )
    assert events == [
        {"hostname": "a", "labels": [], "index": 7, "event": "join"},
        {"event": "reset"},
    ]
    assert parser.headers() == {"Last-Event-ID": "7"}


def test_parse_watch_commands():
    env = {}
    assert parse_args(["watch"], env).action == "watch"
    opts = parse_args(["watch", "labels", "a", "b"], env)
    assert (opts.action, opts.args) == ("watch_labels", ["a", "b"])
    assert parse_args(["watch", "search", "p:"], env).action == "watch_prefixes"


def test_event_lines():
    def text(event):
        return "".join(t for t, _ in event_line(event))

    assert text({"event": "join", "hostname": "a", "labels": ["x:1", "y"]}) == "join   a  x:1  y"
    assert text({"event": "leave", "hostname": "a", "labels": [], "reason": "expired"}) == (
        "leave  a  (expired)"
    )
    assert text({"event": "reset"}).startswith("reset  (")
