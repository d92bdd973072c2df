from setuptools import find_packages, setup

setup(
    name="v2t-jax",
    version="0.1.0",
    description="vec2text in JAX/Flax: recover text from its embedding with an inverter and a compiled corrector loop",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["v2t_jax", "v2t_jax.*"]),
    package_data={"v2t_jax": ["resources/*.txt", "resources/v2t_minilm_l6_v2/*"]},
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "numpy>=2",
        "safetensors>=0.5",
        "tokenizers>=0.22",
        "transformers>=5",
        "ml_collections>=1.0",
        "tqdm>=4.66",
        "sacrebleu>=2.4",
        "tensorflow-datasets>=4.9.10",
        "array_record>=0.8",
        "importlib_resources",  # tensorflow-datasets imports it without declaring it
        "tensorboardX>=2.6",
        "matplotlib>=3.8",  # v2t audit's report figure
    ],
    extras_require={
        # PyTorch reference for parity tests (torch is pinned to the CPU wheel these machines carry; leaving it
        # free lets pip pull a several-GB CUDA build).
        # chromadb, lancedb, faiss-cpu: `v2t audit` is tested on real stores built with their own client libraries.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",  # the suites run on every core (setup.cfg: -n auto)
            "torch==2.13.0",
            "sentence-transformers>=5",
            "chromadb>=1.0",
            "lancedb>=0.20",
            "faiss-cpu>=1.8",
            "gcsfs>=2024.2",  # a gs:// workdir, tested against a GCS emulator the test starts
            "gcp-storage-emulator>=2024.8",
            # database stores, each started by the tests: PostgreSQL 16 + pgvector (pgserver), Qdrant's local
            # folder, Milvus Lite
            "psycopg[binary]>=3.2",
            "pgserver>=0.1.4",
            "qdrant-client>=1.12",
            "pymilvus>=2.5",
            "milvus-lite>=2.4",
        ],
        # run folders in an object store: --workdir gs://bucket/run (etils.epath through fsspec)
        "gcs": ["gcsfs>=2024.2"],
        # the vector stores `v2t audit` reads through their client libraries (parquet through pyarrow), and the
        # database servers' clients (Milvus Lite for a local PATH.db)
        "audit": ["chromadb>=1.0", "lancedb>=0.20", "faiss-cpu>=1.8", "pyarrow>=15", "psycopg[binary]>=3.2",
                  "qdrant-client>=1.12", "pymilvus>=2.5", "milvus-lite>=2.4"],
        "experiments": ["matplotlib>=3.8"],  # (matplotlib is now a dependency; kept for older instructions)
    },
    entry_points={"console_scripts": ["v2t=v2t_jax.cli:main"]},
)
