"""The OpenCL backend: the same ops as the CPU backends, run on one OpenCL device (a consumer
GPU, or PoCL's CPU device in tests). pyopencl is an optional dependency (pip install
'pyopencl[pocl]'); importing this package does not need it, opening a device does.

device   platform/device discovery and selection ($LOCALLLM_OPENCL_DEVICE), kernel build
weights  upload: the one place weight layouts change (runs_as says what each tensor runs as)
kv       the device-resident KV cache
backend  OpenCLBackend and its DeviceArray activation handles
"""
from .backend import DeviceArray, OpenCLBackend
from .device import ENV_DEVICE, OpenCLError, has_gpu, list_devices, select_device

__all__ = ["OpenCLBackend", "DeviceArray", "OpenCLError", "list_devices", "select_device", "has_gpu", "ENV_DEVICE"]
