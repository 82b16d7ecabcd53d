"""AWS Lambda handlers of the SSH Helper CDK stacks.

This folder is the Lambda code asset: each module uses only the standard library and boto3 and
never imports the rest of the package.
"""
