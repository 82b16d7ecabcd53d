"""IAM, emulated where the sandbox enforces it: who signed a request (SigV4 credential scope),
the sandbox account's identities and policies (from the CDK stacks' documents), and a policy
evaluator with IAM's semantics.
"""
