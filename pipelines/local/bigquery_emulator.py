"""Point this process's Google Cloud clients at local emulators (BigQuery, GCS).

Beam 2.77 has no BigQuery endpoint option, so reaching a local BigQuery (tools/bigquery_local)
takes redirecting, in the launching process, each place a client is built:

- Beam's REST client (tables, jobs, extract/load/query): the class attribute
  ``apache_beam.io.gcp.internal.clients.bigquery.BigqueryV2.BASE_URL``;
- DIRECT_READ: ``apache_beam.io.gcp.bigquery`` calls ``bigquery_storage_v1.BigQueryReadClient()``
  with no arguments, looked up on the module at call time; we swap in a subclass that defaults to
  a plain (insecure) gRPC channel to the emulator;
- STREAMING_INSERTS and query results: ``google.cloud.bigquery.Client``, which follows
  ``BIGQUERY_EMULATOR_HOST``;
- credentials: ``google.auth.default()`` returns anonymous ones (and the project), and
  NO_GCE_CHECK / GCE_METADATA_HOST keep google-auth off the metadata server (else ~20 s stalls).

GCS (EXPORT reads and FILE_LOADS writes stage files under ``gs://``): google-cloud-storage, which
Beam's ``gs://`` file system uses, follows ``STORAGE_EMULATOR_HOST``. ``tf.io.gfile`` does not.

Works for the DirectRunner (everything runs in this process), not for Dataflow workers. Both
functions are idempotent; ``restore()`` undoes everything they changed.
"""

import os

# What the functions replaced, to put back: ("env", name) or (object, attribute) -> original
# value (None for an unset environment variable). Only the first, true original is kept.
_saved = {}


def _set_env(name, value):
    _saved.setdefault(("env", name), os.environ.get(name))
    os.environ[name] = value


def _set_attr(owner, name, value):
    _saved.setdefault((owner, name), getattr(owner, name))
    setattr(owner, name, value)


def _forget_beam_credentials():
    """Beam caches the credentials it resolved first (maybe None) for the whole process."""
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = False
        auth._Credentials._credentials = None


def use_bigquery_emulator(rest_url, grpc_address, project="local"):
    """Send BigQuery traffic of this process to the emulator.

    rest_url: e.g. "http://127.0.0.1:9050"; grpc_address (Storage Read API): "127.0.0.1:9060";
    project: what ``google.auth.default()`` reports as the default project.
    """
    import google.auth
    from apache_beam.io.gcp.internal.clients.bigquery import BigqueryV2
    from google.auth.credentials import AnonymousCredentials

    rest_url = rest_url.rstrip("/")
    _set_env("BIGQUERY_EMULATOR_HOST", rest_url)
    _set_env("GOOGLE_CLOUD_PROJECT", project)
    _set_env("NO_GCE_CHECK", "true")
    _set_env("GCE_METADATA_HOST", "127.0.0.1:1")  # nothing listens there: fails at once

    _set_attr(BigqueryV2, "BASE_URL", rest_url + "/bigquery/v2/")

    def anonymous_default(*args, **kwargs):
        return AnonymousCredentials(), project

    _set_attr(google.auth, "default", anonymous_default)
    _use_storage_read_emulator(grpc_address)
    _forget_beam_credentials()


def _use_storage_read_emulator(grpc_address: str) -> None:
    """BigQueryReadClient() (what DIRECT_READ builds, with no arguments) on the emulator's plain gRPC."""
    import grpc
    from google.cloud import bigquery_storage_v1
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import (
        BigQueryReadGrpcTransport,
    )

    # Subclass the original (not an earlier patch) so repeated calls don't stack.
    original = _saved.get((bigquery_storage_v1, "BigQueryReadClient"),
                          bigquery_storage_v1.BigQueryReadClient)

    class EmulatorBigQueryReadClient(original):
        """BigQueryReadClient() that talks plain gRPC to the emulator unless told otherwise."""

        def __init__(self, *args, **kwargs):
            if not args and kwargs.get("transport") is None:
                kwargs.pop("credentials", None)  # a transport instance excludes credentials
                channel = grpc.insecure_channel(grpc_address)
                kwargs["transport"] = BigQueryReadGrpcTransport(channel=channel)
            super().__init__(*args, **kwargs)

    _set_attr(bigquery_storage_v1, "BigQueryReadClient", EmulatorBigQueryReadClient)


def use_storage_emulator(url):
    """Send GCS traffic (google-cloud-storage, so Beam's gs:// file system) to ``url``."""
    _set_env("STORAGE_EMULATOR_HOST", url.rstrip("/"))


def restore():
    """Undo use_bigquery_emulator / use_storage_emulator in this process."""
    while _saved:
        (owner, name), value = _saved.popitem()
        if owner != "env":
            setattr(owner, name, value)
        elif value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _forget_beam_credentials()
