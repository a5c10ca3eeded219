# The commands that made this folder (2-core AMD EPYC, one torch thread, torch 2.14.1; about 19 minutes, suite version 2).
# The meta-test lr of every learner is chosen on the 100 meta-val episodes (protocol.lr_grid).
OMP_NUM_THREADS=1 python -m dfmlbench run --suite free --profile cpu --method random --method average \
  --method ota --method free --set "protocol.lr_grid=[0.01, 0.03, 0.1, 0.3]" --out runs --no-progress > summary.md
for m in random average ota; do
  python -m dfmlbench compare runs/free/cpu/free/*.json runs/free/cpu/$m/*.json
done > compare-free-vs-baselines.txt
python -m dfmlbench compare runs/free/cpu/ota/*.json runs/free/cpu/average/*.json > compare-ota-vs-average.txt
