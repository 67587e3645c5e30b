# Sourced by the GPU scripts (scripts/gpu_check.sh, scripts/gpu_action_free.sh): quiet, unbuffered
# runs; the Python packages the GPU image lacks, installed from the wheels carried in .whl/; this
# checkout first on the import path; the card and torch version into $OUT/device.txt.
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TQDM_MININTERVAL=${TQDM_MININTERVAL:-10}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/wm-site .whl/*.whl \
    && export PYTHONPATH=/tmp/wm-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"; } | tee "$OUT/device.txt"
