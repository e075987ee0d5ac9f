"""Datasets: CoOp split JSON, ImageFolder, CSV, torchvision; class names, prompt templates, few-shot sampling."""
