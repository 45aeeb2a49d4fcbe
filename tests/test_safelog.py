"""
Tests for L{crm_im.safelog}.
"""

from __future__ import annotations

from typing import Any, List

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from crm_im.logging import eventAsJSON
from crm_im.safelog import Logger, printable


class PrintableTests(SynchronousTestCase):
    """
    L{printable} escapes what would break or rewrite a log line.
    """

    def test_plainUnchanged(self) -> None:
        """
        Text without control characters is returned as it is (the same
        object), Chinese and other printable Unicode included.
        """
        text = "张三 (zhang.san@example.com) «ok»"
        self.assertIs(printable(text), text)

    def test_controlsEscaped(self) -> None:
        """
        C0 and C1 controls, DEL and the Unicode line separators are written
        as their Python escapes.
        """
        self.assertEqual(
            printable("a\nb\r\x1b[2K\t\x00\x7f\x85\u2028\u2029z"),
            "a\\nb\\r\\x1b[2K\\t\\x00\\x7f\\x85\\u2028\\u2029z",
        )


class LoggerTests(SynchronousTestCase):
    """
    L{Logger} escapes the string fields of its events, not the format.
    """

    def setUp(self) -> None:
        self.events: List[dict[str, Any]] = []
        self.log = Logger(observer=self.events.append)

    def test_fieldsEscaped(self) -> None:
        """
        A client's name with a newline and a terminal escape is one line,
        in the text and the JSON logs; other fields are left alone.
        """
        name = "Ann\n[登录] root(0)\x1b[1A"
        self.log.info("[登录] {name}({userId}) x={n}\n{extra}", name=name, userId="a", n=3, extra=None)
        (event,) = self.events
        self.assertEqual(event["name"], "Ann\\n[登录] root(0)\\x1b[1A")
        self.assertEqual(event["n"], 3)
        self.assertEqual(formatEvent(event), "[登录] Ann\\n[登录] root(0)\\x1b[1A(a) x=3\nNone")
        self.assertEqual(eventAsJSON(event).count("\n"), 1)

    def test_descriptor(self) -> None:
        """
        Used as a class attribute, as the IM's classes do, it is still a
        L{Logger} of this module.
        """

        class Thing:
            log = Logger(observer=self.events.append)

        Thing().log.warn("{what}", what="\r")
        self.assertEqual(formatEvent(self.events[0]), "\\r")
