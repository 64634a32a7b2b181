"""placeholder until the benchmark lands in this session"""
import argparse


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    pass
def run_bench(args: argparse.Namespace) -> int:
    raise NotImplementedError
