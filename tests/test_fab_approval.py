"""A site adds a bundle's hash to its allow-list only from an approval a publisher it trusts signed: an approval from
another publisher, one edited after signing, or a site with no trusted key is refused, naming the file."""

from __future__ import annotations

import json

import pytest

from common.errors import ConfigError
from common.fab_approval import sign, verify
from server.deploy.certs import make_publisher_key

SHA = "ab" * 32


def test_only_an_unaltered_approval_from_a_trusted_publisher_is_accepted(tmp_path):
    trusted = make_publisher_key(tmp_path / "keys", "fracfl-release")  # as `fracfl deploy publisher-key` makes it
    trusted_key, trusted_pub = trusted["key"], trusted["pub"]
    other_key = make_publisher_key(tmp_path / "elsewhere", "someone")["key"]
    site = tmp_path / "site-publishers"
    site.mkdir()
    (site / trusted_pub.name).write_bytes(trusted_pub.read_bytes())

    good = tmp_path / "good.json"
    good.write_text(json.dumps(sign(SHA, trusted_key, "release 1.2")))
    assert verify(good, site)["fab_sha256"] == SHA

    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(sign(SHA, other_key)))
    with pytest.raises(ConfigError, match=f"{foreign}: signed by publisher .* not one in {site}"):
        verify(foreign, site)

    altered = tmp_path / "altered.json"
    approval = json.loads(good.read_text()) | {"fab_sha256": "cd" * 32}  # another bundle's hash, same signature
    altered.write_text(json.dumps(approval))
    with pytest.raises(ConfigError, match=f"{altered}: the signature does not verify .* altered"):
        verify(altered, site)

    with pytest.raises(ConfigError, match="no trusted publisher key"):
        verify(good, tmp_path / "empty")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ConfigError, match="junk.json: cannot read the approval"):
        verify(tmp_path / "junk.json", site)
