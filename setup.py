"""desomspark: nightly image-quality maps of survey exposures (Spark + PyTorch DESOM)."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="desomspark",
    version="0.1.0",
    license="BSD-3-Clause",
    description="Sort survey exposures by image quality with DESOM, at survey scale on Spark",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["desomspark", "desomspark.*"]),
    package_data={"desomspark.serve.console": ["templates/console/*.html"]},  # the console's pages
    # conf/ and the default models ship with the package so that an installed
    # copy (a container, an executor) finds them; see config.conf_dir, registry.champions.models_dir
    data_files=[
        ("share/desomspark/conf", [str(p) for p in Path("conf").glob("*.*")]),
        ("share/desomspark/conf/cameras", [str(p) for p in Path("conf/cameras").glob("*.yaml")]),
    ]
    + [
        (f"share/desomspark/{folder.as_posix()}", [str(f) for f in folder.iterdir() if f.is_file()])
        for folder in sorted({f.parent for f in Path("models").rglob("*") if f.is_file()})
        if folder != Path("models")
    ],  # the model folders, not the card and the script
    install_requires=[
        "pyspark>=4.0,<5",
        # the CPU build lies on disk as 2.13.0; a CUDA image installs its own build first
        "torch>=2.4",
        "numpy>=2,<3",
        # PySpark 4.3 warns on pandas >= 3
        "pandas>=2.2,<3",
        "pyarrow>=18",
        "astropy>=6",
        "sep>=1.4",
        "fsspec>=2023.1",
        "mlflow>=3.13,<4",
        "galsim>=2.5",
        "scikit-learn>=1.4",
        "matplotlib>=3.8",
        "pyyaml>=6",
        # the console (desomspark serve); MLflow's server needs them too
        "flask>=3",
        "gunicorn>=22",
    ],
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "selenium>=4", "ruff==0.17.6"]},
    entry_points={"console_scripts": ["desomspark=desomspark.cli:main"]},
)
