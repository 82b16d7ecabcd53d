"""SSH Helper v2's module paths for the IAM/SSM stacks and their handlers (thin names over
:mod:`sagemaker_ssh_helper.cdk.iam_ssm_stack`, :mod:`~sagemaker_ssh_helper.cdk.advanced_tier_stack`
and :mod:`sagemaker_ssh_helper.cdk.handlers`). Importing this package does not import
``aws_cdk``; its stack modules do."""
