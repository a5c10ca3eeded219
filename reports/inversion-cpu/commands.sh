# The commands that made this folder (2-core CPU, torch 2.14.1; about 25 minutes).
python -m dfmlbench run --suite inversion --profile cpu --out runs --no-progress > summary.md
for m in free purer bidf-mkd; do
  python -m dfmlbench compare runs/inversion/cpu/$m/*.json runs/inversion/cpu/random/*.json
done > compare-vs-random.txt
