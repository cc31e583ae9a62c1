"""OpenSSH's escape sequences in what the user types into a session (sans I/O, standard library only).

As in ``ssh(1)`` ESCAPE CHARACTERS: the escape character (``~`` unless ``-e`` says otherwise)
is special only as the first character typed on a line — after a carriage return or a newline,
or at the start of the session — and only in a session with a pty (OpenSSH's rule: a
``jumpgate ssh host cmd < file`` must pass every byte through). Then:

=======  ===============================================================================
``~.``   disconnect: the session's connection to the node is closed (through the session
         daemon, only that session's: the daemon's other sessions go on)
``~?``   list these escapes (on the session's stderr)
``~~``   send one ``~``
``~X``   anything else: both characters are sent, as OpenSSH does
=======  ===============================================================================

The filter is fed what is read from the terminal and hands back what to send and what to
do; it is used where the terminal is read: by ``jumpgate ssh`` itself, or by the session
daemon that holds the terminal of a thin client (:func:`appliance.client.localio.relay`).

>>> f = EscapeFilter()
>>> f.feed(b"ls\\r~~x~.")
(b'ls\\r~x~.', [])
>>> f.feed(b"\\r~.")
(b'\\r', ['disconnect'])
"""
from __future__ import annotations

__all__ = ["DEFAULT_ESCAPE", "DISCONNECT", "HELP", "EscapeFilter", "help_text", "parse_escape_char"]

DEFAULT_ESCAPE = ord("~")
DISCONNECT = "disconnect"
HELP = "help"
_LINE_ENDS = (ord("\r"), ord("\n"))


def parse_escape_char(text: str | None) -> int | None:
    """``-e`` as ssh takes it: ``none``, one character, or ``^X`` for a control character.
    None means no escapes; ValueError for anything else."""
    if text is None:
        return DEFAULT_ESCAPE
    if text == "none":
        return None
    if len(text) == 2 and text[0] == "^" and 0x40 <= ord(text[1].upper()) <= 0x5f:
        return ord(text[1].upper()) & 0x1f
    if len(text) == 1 and ord(text) < 0x80:
        return ord(text)
    raise ValueError(f"bad escape character {text!r}: use one character, ^X or none")


def _shown(char: int) -> str:
    return f"^{chr(char | 0x40)}" if char < 0x20 else chr(char)


def help_text(char: int) -> bytes:
    """``~?``'s answer, with CR LF line ends: the terminal is in raw mode."""
    c = _shown(char)
    lines = ["Supported escape sequences:",
             f" {c}.   - terminate the session (this session only, through the session daemon)",
             f" {c}?   - this message",
             f" {c}{c}   - send the escape character by typing it twice",
             "(Note that escapes are only recognized immediately after newline.)"]
    return ("\r\n" + "\r\n".join(lines) + "\r\n").encode()


class EscapeFilter:
    """Bytes typed -> (bytes for the session, actions); ``char`` None passes everything through."""

    def __init__(self, char: int | None = DEFAULT_ESCAPE):
        self.char = char
        self.disconnected = False
        self._line_start = True
        self._escaped = False   # the escape character was typed at the start of a line

    def feed(self, data: bytes) -> tuple[bytes, list[str]]:
        if self.char is None or self.disconnected:
            return (b"" if self.disconnected else data), []
        out, actions = bytearray(), []
        for byte in data:
            if self._escaped:
                self._escaped = False
                if byte == ord("."):
                    self.disconnected = True
                    actions.append(DISCONNECT)
                    break  # nothing typed after ~. goes anywhere
                if byte == ord("?"):
                    actions.append(HELP)
                    self._line_start = False
                    continue
                if byte != self.char:
                    out.append(self.char)  # not an escape: both go, as in OpenSSH
                out.append(byte)
            elif byte == self.char and self._line_start:
                self._escaped = True
                continue
            else:
                out.append(byte)
            self._line_start = byte in _LINE_ENDS
        return bytes(out), actions
