"""SSH Helper v2's module paths for the low-GPU notification stack and its handler (thin names
over :mod:`sagemaker_ssh_helper.cdk.low_gpu_stack` and
:mod:`sagemaker_ssh_helper.cdk.handlers.low_gpu`)."""
