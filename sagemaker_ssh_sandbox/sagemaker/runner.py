"""Run sandbox jobs: one container per instance (algo-1..algo-N), real lifecycle and outcome.

Training: Starting -> Downloading -> Training -> Uploading -> Completed, or Failed (FailureReason
from /opt/ml/output/failure or the tail of stderr), or Stopping -> Stopped on StopTrainingJob and
when StoppingCondition.MaxRuntimeInSeconds passes (SIGTERM, SIGKILL after the grace period).
Processing: same states without the secondary ones; outputs uploaded on success.
Transform: the job's model (from moto's DescribeModel) runs in TransformResources.InstanceCount
containers under :mod:`sagemaker_ssh_sandbox.sagemaker.model_server`, each on its share of the input
objects; on success every ``<name>.out`` goes to TransformOutput.S3OutputPath (see
:mod:`sagemaker_ssh_sandbox.sagemaker.serving`). Stopping and failures as for processing.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

from sagemaker_ssh_sandbox.sagemaker import layout, serving
from sagemaker_ssh_sandbox.sagemaker.container import Container, ContainerConfig
from sagemaker_ssh_sandbox.sagemaker.cwlogs import LogShipper
from sagemaker_ssh_sandbox.sagemaker.jobs import Job

logger = logging.getLogger(__name__)

FAILURE_REASON_MAX = 1024
EXIT_SETUP_FAILED = 125


class JobRunner:
    def __init__(self, state_dir: Path, platform: layout.Platform, s3_client: Any,
                 bridges: dict[int, Path], shipper: LogShipper | None = None,
                 stop_grace: float = 10.0,
                 binds: list[tuple[str, str]] | None = None, sagemaker: Any = None) -> None:
        self.state_dir = state_dir
        self.sagemaker = sagemaker  # moto's SageMaker: models of transform jobs
        self.platform = platform
        self.s3 = s3_client
        self.bridges = bridges
        self.shipper = shipper
        self.stop_grace = stop_grace
        self.binds = list(binds or [])
        self.save: Callable[[Job], None] = lambda job: None
        # SageMaker's remote debugging (remote_debug.RemoteDebug): its agent in each training
        # container; None: no agent
        self.remote_debug: Any = None
        self._threads: dict[str, threading.Thread] = {}
        self._jobs: list[Job] = []
        self._lock = threading.Lock()

    def __call__(self, job: Job) -> None:
        thread = threading.Thread(target=self._run, args=(job,), daemon=True,
                                  name=f"{job.kind.key} job {job.name}")
        with self._lock:
            self._jobs.append(job)
            self._threads[job.arn] = thread
        thread.start()

    # -- lifecycle ----------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        try:
            self._run_containers(job)
        except layout.JobSetupError as e:
            self._fail(job, f"ClientError: {e}")
        except Exception as e:  # the job fails; the sandbox keeps serving
            logger.exception("job %s failed in the sandbox itself", job.name)
            self._fail(job, f"InternalServerError: sandbox: {e}")
        finally:
            self.save(job)

    def _fail(self, job: Job, reason: str) -> None:
        job.finish("Failed", "Failed", "Job failed", reason[:FAILURE_REASON_MAX])

    def _container(self, job: Job, host: str) -> Container:
        root = self.state_dir / "jobs" / job.kind.key / job.name / host
        sink = self.shipper.sink(job.kind.key, job.name, host) if self.shipper else None
        config = ContainerConfig(name=f"{job.name}-{host}", hostname=host, root=root,
                                 argv=[], env={}, bridges=dict(self.bridges),
                                 binds=list(self.binds))
        return Container(config, on_output=sink, python=self.platform.python)

    def _containers(self, job: Job) -> list[Container]:
        if job.kind.key == "transform":
            return self._transform_containers(job)
        count = int((job.request.get("ResourceConfig") or job.request.get("ProcessingResources", {})
                     .get("ClusterConfig") or {}).get("InstanceCount", 1))
        hosts = layout.hosts_for(count)
        prepare = (layout.prepare_training if job.kind.key == "training"
                   else layout.prepare_processing)
        containers = []
        for host in hosts:
            container = self._container(job, host)
            argv, cwd, env = prepare(self.s3, container.opt_ml, job.request, job.arn, host,
                                     hosts, self.platform)
            container.config.argv, container.config.cwd, container.config.env = argv, cwd, env
            if job.kind.key == "training" and self.remote_debug is not None:
                sidecar, bind = self.remote_debug.sidecar(
                    job, host, self.platform.region, self.platform.env(), container.root)
                container.config.sidecars.append(sidecar)
                container.config.binds.append(bind)
            containers.append(container)
        return containers

    def _transform_containers(self, job: Job) -> list[Container]:
        if self.sagemaker is None:
            raise layout.JobSetupError("this sandbox runner has no SageMaker client for models")
        definition = serving.container_definition(
            serving.describe_model(self.sagemaker, str(job.request.get("ModelName"))))
        inputs = serving.transform_inputs(self.s3, job.request)
        count = max(1, int((job.request.get("TransformResources") or {}).get("InstanceCount", 1)))
        containers = []
        for index, host in enumerate(layout.hosts_for(count)):
            container = self._container(job, host)
            config = container.config
            config.argv, config.cwd, config.env = serving.prepare_transform(
                self.s3, container.root, container.opt_ml, definition, job.request,
                inputs[index::count], self.platform)
            config.binds.append((str(container.root / "transform"), serving.TRANSFORM_DIR))
            containers.append(container)
        return containers

    def _run_containers(self, job: Job) -> None:
        training = job.kind.key == "training"
        if training:
            job.set_secondary("Downloading", "Downloading input data")
        self.save(job)
        containers = self._containers(job)
        if job.stop_requested.is_set():
            job.finish("Stopped", "Stopped", "Job stopped before it started")
            return
        with job.lock:
            job.containers = containers
            job.started = time.time()
            if training:
                job.set_secondary("Training", "Training in progress.")
        self.save(job)
        try:
            for container in containers:
                container.start()
        except Exception:
            for container in containers:
                container.terminate(0)
            raise
        outcome, failed = self._wait(job, containers)
        for container in containers:
            container.remove_scratch()
        self._conclude(job, containers, outcome, failed)

    def _wait(self, job: Job, containers: list[Container]
              ) -> tuple[str, tuple[Container, int] | None]:
        """Wait for every container; returns (outcome, first failure)."""
        for container in containers:
            threading.Thread(target=lambda c=container: job.events.put((c, c.wait())),
                             daemon=True).start()
        limit = (job.request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
        deadline = time.monotonic() + float(limit) if limit else None
        remaining, outcome = len(containers), "ok"
        failed: tuple[Container, int] | None = None
        while remaining:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                source, code = job.events.get(timeout=timeout)
            except queue.Empty:
                outcome, deadline = "max_runtime", None
                self._terminate(containers)
                continue
            if source == "stop":
                outcome = "stopped"
                self._terminate(containers)
                continue
            remaining -= 1
            if code != 0 and failed is None and outcome == "ok":
                failed = (source, code if code is not None else -1)
                self._terminate(containers)
        return outcome, failed

    def _terminate(self, containers: list[Container]) -> None:
        for container in containers:
            threading.Thread(target=container.terminate, args=(self.stop_grace,),
                             daemon=True).start()

    def _conclude(self, job: Job, containers: list[Container], outcome: str,
                  failed: tuple[Container, int] | None) -> None:
        training = job.kind.key == "training"
        if outcome == "stopped" or job.stop_requested.is_set():
            if training:
                self._upload_model(job, containers[0])
            job.finish("Stopped", "Stopped", "Job stopped")
        elif outcome == "max_runtime":
            job.finish("Stopped", "MaxRuntimeExceeded",
                       "Job stopped because it exceeded MaxRuntimeInSeconds")
        elif failed is not None:
            container, code = failed
            job.exit_message = self._tail(container)
            self._fail(job, self._failure_reason(job, container, code))
        else:
            if training:
                job.set_secondary("Uploading", "Uploading generated training model")
                self.save(job)
                self._upload_model(job, containers[0])
            elif job.kind.key == "transform":
                serving.upload_transform_outputs(self.s3, [c.root for c in containers],
                                                 job.request)
            else:
                for container in containers:
                    layout.upload_processing_outputs(self.s3, container.opt_ml, job.request)
            job.finish("Completed", "Completed", "Job completed")

    @staticmethod
    def _tail(container: Container, lines: int = 10) -> str:
        return "\n".join(list(container.stderr_tail)[-lines:])

    def _failure_reason(self, job: Job, container: Container, code: int) -> str:
        if code == EXIT_SETUP_FAILED and any("sandbox-init:" in line
                                             for line in container.stderr_tail):
            return f"InternalServerError: {self._tail(container, 3)}"
        failure_file = container.opt_ml / "output" / "failure"
        if failure_file.is_file() and failure_file.read_text().strip():
            return f"AlgorithmError: {failure_file.read_text().strip()}"
        if job.kind.key == "processing":
            return "AlgorithmError: See job logs for more information"
        if job.kind.key == "transform":
            last = [line.strip() for line in container.stderr_tail if line.strip()][-1:]
            return (f"AlgorithmError: the model server on {container.config.hostname} exited "
                    f"with code {code}{': ' + last[0] if last else ''}. See job logs for more "
                    "information")
        return (f"AlgorithmError: ExecuteUserScriptError:\nExitCode {code}\n"
                f"ErrorMessage \"{self._tail(container)}\"\n"
                f"Command \"{' '.join(container.config.argv)}\", exit code: {code}")

    def _upload_model(self, job: Job, primary: Container) -> None:
        output = (job.request.get("OutputDataConfig") or {}).get("S3OutputPath")
        if not output:
            return
        base = f"{output.rstrip('/')}/{job.name}/output"
        layout.upload_tarball(self.s3, primary.opt_ml / "model", f"{base}/model.tar.gz")
        job.model_artifacts = f"{base}/model.tar.gz"
        data = primary.opt_ml / "output" / "data"
        if data.is_dir() and any(data.iterdir()):
            layout.upload_tarball(self.s3, data, f"{base}/output.tar.gz")

    # -- daemon -------------------------------------------------------------------------------
    def containers(self) -> list[dict[str, Any]]:
        with self._lock:
            jobs = list(self._jobs)
        return [dict(c.info(), job=j.name, kind=j.kind.key) for j in jobs for c in j.containers]

    def shutdown(self, timeout: float) -> None:
        """Stop every running job (SIGTERM, then SIGKILL after the grace) and wait for them."""
        with self._lock:
            jobs = list(self._jobs)
            threads = list(self._threads.values())
        for job in jobs:
            if not job.done:
                job.stop_requested.set()
                job.events.put(("stop", None))
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
