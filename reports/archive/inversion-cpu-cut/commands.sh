# The commands that made this folder (2-core AMD EPYC, torch 2.14.1; about 20 minutes, suite version 2).
python -m dfmlbench run --suite inversion --profile cpu --out runs --no-progress > summary.md
for m in free purer bidf-mkd; do
  python -m dfmlbench compare runs/inversion/cpu/$m/*.json runs/inversion/cpu/random/*.json
done > compare-vs-random.txt
