"""
Keep migrate_to_vault's new secrets on record in a file, durable before each rotation commits.

A run interrupted at any point (kill -9 included) is finished by a run with the same file,
which reuses the secrets the file already holds.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

from . import services
from .models import Credential

LINE_KEYS = ("agentId", "credentialId", "clientId", "clientSecret")


class SecretsFileError(Exception):
    """The secrets file cannot be used; the message names it and says what to do (nothing was changed)."""


class SecretsFile:
    """
    The secrets file: one JSON line per new secret, mode 0600, only ever appended to.

    A file that exists already is taken up again only if it is one a migration wrote (a
    regular file of ours, readable by us alone, every line one of ours), so that a rerun
    can finish an interrupted run. Its lines are the secrets already handed out: a
    credential with a line there and still on bcrypt was interrupted between writing the
    line and committing, and is finished with the same secret.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        #: credentialId -> its line, for the secrets already in the file.
        self.lines: dict[uuid.UUID, dict[str, str]] = {}
        self.cut_off = 0

    def inspect(self) -> bool:
        """Read an existing file's lines without changing it; return whether it exists."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SecretsFileError(f"Cannot use {self.path} as --output: {exc.strerror}.") from None
        try:
            self._check_owned(fd)
            self._parse(self._read_all(fd))
        finally:
            os.close(fd)
        return True

    def open(self) -> bool:
        """Open for appending, creating it with mode 0600; return whether it existed (a resumed run)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW
        try:
            self.fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise SecretsFileError(f"Cannot create {self.path}: {exc.strerror}.") from None
        else:
            os.fchmod(self.fd, 0o600)  # whatever the umask allowed
            self._sync_directory()
            return False
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW)
        except OSError as exc:
            raise SecretsFileError(f"Cannot use {self.path} as --output: {exc.strerror}.") from None
        try:
            self._check_owned(self.fd)
            content = self._read_all(self.fd)
            self._parse(content)
        except SecretsFileError:
            self.close()
            raise
        complete = content[: content.rfind(b"\n") + 1]
        if len(complete) != len(content):
            # A line cut off by an interruption: its rotation never committed, so it holds no working secret.
            os.ftruncate(self.fd, len(complete))
            os.fsync(self.fd)
        return True

    def _check_owned(self, fd: int) -> None:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise SecretsFileError(
                f"{self.path} exists and is not a file this command wrote (a regular file of yours with mode 0600); "
                "nothing was changed. Choose another --output, or rerun with the file of the interrupted run."
            )

    @staticmethod
    def _read_all(fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, content: bytes) -> None:
        complete, _, tail = content.rpartition(b"\n")
        self.cut_off = 1 if tail else 0
        for number, raw in enumerate(complete.split(b"\n") if complete else [], start=1):
            try:
                line = json.loads(raw)
                if not isinstance(line, dict) or sorted(line) != sorted(LINE_KEYS):
                    raise ValueError
                if not all(isinstance(line[key], str) for key in LINE_KEYS):
                    raise ValueError
                credential_id = uuid.UUID(line["credentialId"])
            except ValueError:
                raise SecretsFileError(
                    f"{self.path} line {number} is not a line this command wrote; nothing was changed. "
                    "Choose another --output."
                ) from None
            self.lines[credential_id] = line

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def handed_out(self, credential: Credential) -> str | None:
        """Return the secret this file already holds for the credential, if its line names it exactly."""
        line = self.lines.get(credential.id)
        if line is None or (line["clientId"], line["agentId"]) != (credential.client_id, str(credential.agent_id)):
            return None
        return line["clientSecret"]

    @staticmethod
    def line_for(issued: services.IssuedCredential) -> dict[str, str]:
        """Return the file's line for a credential and its new secret."""
        credential = issued.credential
        return {
            "agentId": str(credential.agent_id),
            "credentialId": str(credential.id),
            "clientId": credential.client_id,
            "clientSecret": issued.client_secret,
        }

    def record(self, issued: services.IssuedCredential) -> None:
        """Append the new secret's line and make it durable (called before the rotation commits)."""
        assert self.fd is not None
        line = self.line_for(issued)
        data = (json.dumps(line) + "\n").encode()
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
        os.fsync(self.fd)
        self.lines[issued.credential.id] = line

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
