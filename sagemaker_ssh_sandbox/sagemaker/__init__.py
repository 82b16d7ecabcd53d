"""SageMaker, emulated: jobs, endpoints and batch transform, Studio apps and notebook
instances, each running in Linux-namespace containers laid out as SageMaker lays them out,
their logs in CloudWatch Logs, and what moto answers differently from AWS.
"""
