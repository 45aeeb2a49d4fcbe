"""
Tests for C{--store} (and C{CRM_IM_STORE}): which store a node opens.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from crm_im.config import Config
from crm_im.server import CRMIMService
from crm_im.storage import PostgresMessageStore, SQLiteEngine, SQLiteMessageStore
from crm_im.tap import Options


def parse(*args: str) -> Config:
    """
    Parse C{args} as C{twistd crm_im} would.
    """
    options = Options()
    options.parseOptions(list(args))
    config: Config = options.config
    return config


class StoreOptionTests(SynchronousTestCase):
    """
    C{--store} to L{Config.store} to the service's store.
    """

    def setUp(self) -> None:
        self.saved = os.environ.pop("CRM_IM_STORE", None)

    def tearDown(self) -> None:
        os.environ.pop("CRM_IM_STORE", None)
        if self.saved is not None:
            os.environ["CRM_IM_STORE"] = self.saved

    def test_defaultSQLiteInDataDir(self) -> None:
        """
        Without C{--store}: C{crm_im.sqlite3} in the data directory, with the
        C{--sqlite-synchronous} mode.
        """
        config = parse("--data-dir", "/srv/im", "--sqlite-synchronous", "normal")
        self.assertIsNone(config.store)
        self.assertEqual(config.storeURL(), "sqlite:/srv/im/crm_im.sqlite3")
        service = CRMIMService(config, reactor)
        assert isinstance(service.store, SQLiteMessageStore)
        engine = service.store.database.engine
        assert isinstance(engine, SQLiteEngine)
        self.assertEqual((service.store.path, engine.synchronous), ("/srv/im/crm_im.sqlite3", "NORMAL"))

    def test_postgres(self) -> None:
        """
        A PostgreSQL URL, from the option or (when it is absent) the
        environment, makes a PostgreSQL store with the commit interval asked
        for; the URL, which may hold a password, is not in the config's
        C{repr}.
        """
        url = "postgresql://crm:secret@db.example/crm"
        config = parse("--store", url, "--commit-interval", "20")
        self.assertEqual(config.storeURL(), url)
        self.assertNotIn("secret", repr(config))
        service = CRMIMService(config, reactor)
        assert isinstance(service.store, PostgresMessageStore)
        self.assertEqual(service.store.url, url)
        self.assertEqual(service.store.commitInterval, 0.02)
        os.environ["CRM_IM_STORE"] = "postgres://db/other"
        self.assertEqual(parse().store, "postgres://db/other")
        self.assertEqual(parse("--store", "sqlite:x.db").store, "sqlite:x.db")

    def test_refused(self) -> None:
        """
        A store URL of an unknown kind, or SQLite without a path, is a usage
        error naming C{--store}, without the password.
        """
        for value in ("mysql://crm:secret@db/crm", "sqlite:"):
            with self.subTest(value=value):
                error = self.assertRaises(usage.UsageError, parse, "--store", value)
                self.assertIn("--store", str(error))
                self.assertNotIn("secret", str(error))
