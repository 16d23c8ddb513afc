"""The core, assembled: settings, catalog, artifact store, the datasets service and the job runner.

Every face (HTTP server, CLI, tests) builds one `Engine` and calls into it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentracy.config import Settings
from opentracy.datasets import jobs as dataset_jobs
from opentracy.datasets.service import DatasetService
from opentracy.jobs import JobRunner
from opentracy.llm.aliases import AliasService
from opentracy.llm.cache import ResponseCache
from opentracy.llm.local_models import LocalModelService
from opentracy.llm.pricing import Pricing
from opentracy.store.artifacts import ArtifactStore
from opentracy.store.catalog import Catalog
from opentracy.traces import jobs as trace_jobs
from opentracy.traces.service import TraceService
from opentracy.traces.writer import TraceWriter

if TYPE_CHECKING:
    from opentracy.llm.gateway import Gateway
    from opentracy.traces.proxy import RecordingProxy


class Engine:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.settings.home.mkdir(parents=True, exist_ok=True)
        self.settings.staging_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(self.settings.database_url)
        self.artifacts = ArtifactStore(self.settings.artifacts_url, cache_dir=self.settings.home / "cache")
        self.datasets = DatasetService(
            self.catalog, self.artifacts, chunk_bytes=self.settings.ingest_chunk_bytes
        )
        self.jobs = JobRunner(self.catalog, workers=self.settings.job_workers)
        dataset_jobs.register(self.jobs, self.datasets, self.settings.staging_dir)
        self.aliases = AliasService(self.catalog)
        self.llm_cache = ResponseCache(self.catalog)
        self.pricing = Pricing()  # the genai-prices table loads on the first cost asked, not here
        self.local_models = LocalModelService(self.catalog)  # what `local/<name>` runs
        self._gateway: Gateway | None = None
        self.traces = TraceService(self.catalog, self.pricing)
        # Traces recorded on hot paths (the proxy, the gateway) are written in batches off those paths.
        self.trace_writer = TraceWriter(self.traces.insert_rows)
        self._proxy: RecordingProxy | None = None
        trace_jobs.register(self.jobs, self.traces, self.settings.staging_dir)
        self._started = False
        # Curation (judge, filter, review) of stored datasets: jobs, runs and the review queue.
        from opentracy.distillation.curation.service import CurationService

        self.curation = CurationService(
            self.catalog, self.datasets, self.artifacts, self.jobs, lambda: self.gateway
        )
        self.review = self.curation.review
        self._register_embedders()
        self._init_clustering()
        self._init_generation()

    def _register_embedders(self) -> None:
        """Name the embedders a curation config may ask for (the off-cluster distance rule), bound to this
        engine's data directory: minilm (the default, built locally on first use), minilm-torch, static."""
        from opentracy.distillation.curation.filters.cluster import ENGINE_NAMES
        from opentracy.embeddings import resolve_embedder

        home = self.settings.home
        self.curation.embedders.update(
            {name: (lambda name=name: resolve_embedder(name, home=home)) for name in ENGINE_NAMES}
        )

    @property
    def gateway(self) -> Gateway:
        """The LLM gateway every model call of the platform goes through (aliases, cache and prices of this
        engine; providers from the environment). Built on first use."""
        if self._gateway is None:
            from opentracy.llm.gateway import Gateway, load_endpoints
            from opentracy.llm.local_models import with_registry

            self._gateway = Gateway(
                aliases=self.aliases,
                cache=self.llm_cache,
                pricing=self.pricing,
                recorder=self._record_call,
                endpoints=with_registry(load_endpoints(), self.local_models),
            )
        return self._gateway

    def _record_call(self, facts: dict) -> None:
        """The gateway's recorder: a call that is not internal becomes a trace (written off the call's path)."""
        import msgspec

        from opentracy.traces.schema import TraceIn, to_row

        self.trace_writer.put(lambda: to_row(msgspec.convert(facts, TraceIn), source="gateway"))

    @property
    def proxy(self) -> RecordingProxy:
        """The OpenAI-compatible recording proxy behind POST /v1/chat/completions."""
        if self._proxy is None:
            from opentracy.traces.proxy import RecordingProxy

            self._proxy = RecordingProxy(
                self.gateway, self.trace_writer, pricing=self.pricing, server_api_key=self.settings.api_key
            )
        return self._proxy

    def start(self) -> Engine:
        """Resume or fail the jobs a previous process left behind."""
        if not self._started:
            self._started = True
            self.artifacts.clean_scratch()  # half-written files of a process that died
            self.jobs.recover()
        return self

    def close(self) -> None:
        self.jobs.shutdown(wait=True)
        if self._gateway is not None:
            self._gateway.close()
        self.trace_writer.close()  # every trace still queued is written before the catalog closes
        self.ingest_embedder.close()  # then embedded (clustering), for a bounded time
        self.catalog.dispose()

    # -- clustering (issue 6) -------------------------------------------------------------------------
    def _init_clustering(self) -> None:
        from opentracy.clustering import jobs as clustering_jobs
        from opentracy.clustering.service import ClusteringService

        self.clustering = ClusteringService(
            self.catalog, self.artifacts, home=self.settings.home, gateway=lambda: self.gateway
        )
        clustering_jobs.register(self.jobs, self.clustering, self.settings.staging_dir)
        # traces → clusters (runs over a trace filter, new traces assigned, promote) and embedding at ingest
        from opentracy.clustering.ingest import IngestEmbedder
        from opentracy.clustering.traces import TraceClusters

        self.trace_clusters = TraceClusters(
            self.clustering, self.traces, self.datasets, self.jobs, self.settings.staging_dir
        )
        self.trace_clusters.register()
        self.ingest_embedder = IngestEmbedder(self.trace_clusters)
        self.traces.on_insert.append(self.ingest_embedder.offer)

    def submit_clustering(self, items, config=None, *, source=None):  # type: ignore[no-untyped-def]
        """Queue a clustering run of (item_id, text) pairs as a job; returns the job."""
        from opentracy.clustering import jobs as clustering_jobs

        return clustering_jobs.submit(
            self.jobs, self.clustering, self.settings.staging_dir, items, config, source=source
        )

    # -- synthetic generation (issue 7) -------------------------------------------------------------------
    def _init_generation(self) -> None:
        from opentracy.distillation.generation.service import GenerationService

        self.generation = GenerationService(
            self.catalog,
            self.datasets,
            self.artifacts,
            self.jobs,
            lambda: self.gateway,
            self.pricing,
            self.settings.staging_dir,
        )

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
