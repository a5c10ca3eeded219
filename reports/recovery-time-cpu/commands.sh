# The command that made table.md (2-core AMD EPYC, torch 2.14.1, 2 threads; 46 s; with the fused upsampling convolutions). BiDf-MKD and 84 px
# are left out: one paper-size BiDf-MKD event takes minutes on this CPU. On a GPU run it whole:
#   python -m dfmlbench.recovery_time --out table.md
python -m dfmlbench.recovery_time --sizes 32 --methods free free-2 purer --span 2 --out table.md
