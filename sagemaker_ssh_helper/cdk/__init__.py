"""AWS account setup for SSH Helper as CDK stacks (``pip install sagemaker-ssh-helper[cdk]``).

Deploy with the CDK CLI, naming the app module::

    cdk -a "python -m sagemaker_ssh_helper.cdk.app" deploy SSH-IAM-SSM-Stack \\
        -c sagemaker_role=<SageMaker execution role> -c user_role=<role of the users>
    cdk -a "python -m sagemaker_ssh_helper.cdk.app" deploy SSH-IAM-SSM-Advanced-Tier-Stack
    cdk -a "python -m sagemaker_ssh_helper.cdk.app" deploy SSH-Low-GPU-Notification-Stack \\
        -c sns_notification_topic_arn=<SNS topic ARN>

The policies themselves live in :mod:`sagemaker_ssh_helper.cdk.policies` (no CDK import), the
Lambda handlers in :mod:`sagemaker_ssh_helper.cdk.handlers`. Importing this package does not
import ``aws_cdk``.
"""
