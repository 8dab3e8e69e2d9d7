"""The one conditional switch of a connection's secret: how a rotation makes its new secret current.

One writer per connection: the switch happens only at the credential revision the rotation
planned from, so a PATCH that changed the credentials meanwhile wins and nothing is overwritten.
"""

from __future__ import annotations

from connections import kinds, store
from connections.kinds import KindSpec
from core import clock, records, tables
from core.connection_seam import RevisionMoved
from core.errors import Unavailable


async def switch_secret(
    spec: KindSpec, connection_id: str, purpose: str, secret: str, *, from_rev: str, key_id: str = ""
) -> str:
    """Make `secret` the connection's `purpose` secret if it is still at `from_rev` (the one writer
    rule): the secret goes under a new revision, the row flips to it with its ETag, then the old
    name is deleted and cached clients dropped. `RevisionMoved` if the credentials changed; a
    change of anything else (a rename) is re-read and tried again. The new revision."""
    for _ in range(5):
        record = await store.get_record(spec.kind, connection_id)
        if record.status == store.DELETING:
            # Like a credential change: the caller (a rotation) undoes its own new secret.
            raise RevisionMoved(f"connection {connection_id} is being deleted")
        if record.credential_rev != from_rev:
            if await store.read_secret(record, purpose) == secret:
                return record.credential_rev  # this switch happened already (a resumed step)
            raise RevisionMoved(f"connection {connection_id} is at another credential revision")
        rev = store.new_rev()
        refs = await store.put_secrets(spec.kind, record.id, rev, {purpose: secret})
        updated = record.model_copy(
            update={
                "credential_rev": rev,
                "secret_refs": refs,
                "secret_key_id": key_id,
                "updated_at": clock.isoformat(clock.now()),
            }
        )
        try:
            await records.replace(updated)
        except tables.ConcurrencyConflict:
            await store.delete_secrets(refs)
            continue
        except BaseException:
            await store.delete_secrets(refs)
            raise
        await kinds.invalidate(spec, record)
        await store.delete_secrets(record.secret_refs)
        return rev
    raise Unavailable(f"connection {connection_id} kept changing while its secret was stored; try again")
