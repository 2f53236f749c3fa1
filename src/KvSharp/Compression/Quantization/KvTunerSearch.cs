namespace KvSharp.Compression.Quantization;

/// <summary>Settings of <see cref="KvTunerSearch"/>.</summary>
public sealed record KvTunerSearchOptions
{
    /// <summary>Largest mean equivalent bits a chosen configuration may have (e.g. 4 or 3.25).</summary>
    public double Budget { get; init; } = 4;

    /// <summary>Layer groups sharing one decision (inter-layer clustering); at most the layer count.</summary>
    public int Groups { get; init; } = 4;

    /// <summary>NSGA-II population size (even, ≥ 4).</summary>
    public int Population { get; init; } = 64;

    /// <summary>NSGA-II generations.</summary>
    public int Generations { get; init; } = 200;

    /// <summary>Seed of the search's random choices (the search is deterministic given it).</summary>
    public int Seed { get; init; }
}

/// <summary>One configuration on the search's front: its layer pairs and both objectives.</summary>
/// <param name="Layers">Pair per layer.</param>
/// <param name="Loss">Predicted quality loss: the sum over layers of the layer's sensitivity at its pair.</param>
/// <param name="MeanBits">Mean equivalent bits over layers.</param>
public sealed record KvTunerSolution(IReadOnlyList<KvTunerPair> Layers, double Loss, double MeanBits);

/// <summary>What the search found.</summary>
/// <param name="Groups">Layer indices of each group (one decision per group).</param>
/// <param name="GroupCandidates">The pairs left to each group after pruning dominated ones.</param>
/// <param name="Front">The non-dominated feasible configurations (mean bits ≤ budget), by increasing mean bits.</param>
/// <param name="Chosen">The front's configuration of least loss (ties: fewer bits).</param>
public sealed record KvTunerSearchResult(IReadOnlyList<int[]> Groups, IReadOnlyList<KvTunerPair[]> GroupCandidates,
    IReadOnlyList<KvTunerSolution> Front, KvTunerSolution Chosen);

/// <summary>
/// KVTuner's offline search over per-layer (key bits, value bits) pairs, given each layer's measured sensitivity to
/// each pair (<see cref="KvTunerProfiler"/>): the loss of a configuration is modelled as the sum of its layers'
/// sensitivities (each measured with only that layer quantized), which is what makes per-layer profiling enough.
/// </summary>
/// <remarks>
/// <list type="number">
/// <item>Intra-layer pruning: a pair is dropped from a layer when another pair has no more bits and no more loss
/// (strictly less of one): no optimal configuration uses it.</item>
/// <item>Inter-layer clustering: layers are grouped by agglomerative average-linkage clustering of their
/// log-sensitivity profiles (over the pairs every layer kept) into <see cref="KvTunerSearchOptions.Groups"/> groups;
/// a group takes one pair for all its layers, from the pairs not dominated on the group's summed sensitivity.</item>
/// <item>NSGA-II (Deb et al. 2002) over one gene per group, objectives (loss, mean bits), Deb's constrained
/// domination for mean bits ≤ budget (feasible beats infeasible; among infeasible, less excess wins), binary
/// tournaments on (rank, crowding distance), uniform crossover, per-gene mutation 1/genes, elitist (μ+λ) survival.</item>
/// </list>
/// </remarks>
public static class KvTunerSearch
{
    /// <summary>Runs the search on <paramref name="sensitivity"/>[layer][candidate] (candidate order of <see cref="KvTunerPair.Candidates"/>).</summary>
    /// <exception cref="KvSharpException">Bad options or a sensitivity table of the wrong shape; no configuration within the budget.</exception>
    public static KvTunerSearchResult Run(IReadOnlyList<double[]> sensitivity, KvTunerSearchOptions options, IProgress<double>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(sensitivity);
        ArgumentNullException.ThrowIfNull(options);
        int layers = sensitivity.Count, pairs = KvTunerPair.Candidates.Count;
        if (layers == 0) throw new KvSharpException("KVTuner search: no layers");
        if (sensitivity.Any(s => s.Length != pairs)) throw new KvSharpException($"KVTuner search: every layer needs {pairs} sensitivities");
        if (sensitivity.Any(s => s.Any(v => !double.IsFinite(v)))) throw new KvSharpException("KVTuner search: sensitivities must be finite");
        if (options.Groups < 1) throw new KvSharpException($"KVTuner search: groups must be ≥ 1, got {options.Groups}");
        if (options.Population < 4 || options.Population % 2 != 0) throw new KvSharpException($"KVTuner search: population must be even and ≥ 4, got {options.Population}");
        if (options.Generations < 1) throw new KvSharpException($"KVTuner search: generations must be ≥ 1, got {options.Generations}");
        double minBits = KvTunerPair.Candidates.Min(p => p.MeanBits);
        if (options.Budget < minBits) throw new KvSharpException($"KVTuner search: budget {options.Budget} bits is below the smallest pair's {minBits}");

        var kept = Enumerable.Range(0, layers).Select(l => Prune(sensitivity[l])).ToArray();
        var groups = Cluster(sensitivity, kept, Math.Min(options.Groups, layers));
        var groupCandidates = groups.Select(g => Prune(Sum(sensitivity, g))).ToArray();
        var problem = new Problem(sensitivity, groups, groupCandidates, layers, options.Budget);
        var front = Nsga2(problem, options, progress);
        var chosen = front.OrderBy(s => s.Loss).ThenBy(s => s.MeanBits).First();
        return new KvTunerSearchResult(groups, groupCandidates.Select(c => c.Select(i => KvTunerPair.Candidates[i]).ToArray()).ToArray(), front, chosen);
    }

    /// <summary>Indices of the candidates not dominated in (loss, bits) for the given per-candidate losses, by increasing bits.</summary>
    internal static int[] Prune(double[] loss)
    {
        var c = KvTunerPair.Candidates;
        var keep = new List<int>();
        for (int i = 0; i < c.Count; i++)
        {
            bool dominated = false;
            for (int j = 0; j < c.Count && !dominated; j++)
                dominated = j != i && loss[j] <= loss[i] && c[j].MeanBits <= c[i].MeanBits && (loss[j] < loss[i] || c[j].MeanBits < c[i].MeanBits);
            if (!dominated) keep.Add(i);
        }
        // Cheapest first: gene value 0 is the group's fewest bits, the last its most.
        return keep.OrderBy(i => c[i].MeanBits).ThenBy(i => i).ToArray();
    }

    private static double[] Sum(IReadOnlyList<double[]> sensitivity, int[] layers)
    {
        var s = new double[KvTunerPair.Candidates.Count];
        foreach (int l in layers) for (int p = 0; p < s.Length; p++) s[p] += sensitivity[l][p];
        return s;
    }

    /// <summary>Average-linkage agglomerative clustering of the layers' log-sensitivity profiles; groups ordered by first layer.</summary>
    internal static int[][] Cluster(IReadOnlyList<double[]> sensitivity, int[][] kept, int count)
    {
        int layers = sensitivity.Count;
        // Compare layers on the pairs every layer kept (the ones that matter to all); all pairs if none is common.
        var common = Enumerable.Range(0, KvTunerPair.Candidates.Count).Where(p => kept.All(k => k.Contains(p))).ToArray();
        if (common.Length == 0) common = Enumerable.Range(0, KvTunerPair.Candidates.Count).ToArray();
        var profile = sensitivity.Select(s => common.Select(p => Math.Log(Math.Max(s[p], 0) + 1e-9)).ToArray()).ToArray();
        var clusters = Enumerable.Range(0, layers).Select(l => new List<int> { l }).ToList();
        while (clusters.Count > count)
        {
            int bi = 0, bj = 1;
            double best = double.PositiveInfinity;
            for (int i = 0; i < clusters.Count; i++)
                for (int j = i + 1; j < clusters.Count; j++)
                {
                    double d = 0;
                    foreach (int a in clusters[i]) foreach (int b in clusters[j]) d += Distance(profile[a], profile[b]);
                    d /= clusters[i].Count * clusters[j].Count;
                    if (d < best) { best = d; bi = i; bj = j; } // strict: ties keep the earliest pair (deterministic)
                }
            clusters[bi].AddRange(clusters[bj]);
            clusters.RemoveAt(bj);
        }
        return clusters.Select(c => c.Order().ToArray()).OrderBy(c => c[0]).ToArray();
    }

    private static double Distance(double[] a, double[] b)
    {
        double d = 0;
        for (int i = 0; i < a.Length; i++) d += (a[i] - b[i]) * (a[i] - b[i]);
        return Math.Sqrt(d);
    }

    private sealed class Problem(IReadOnlyList<double[]> sensitivity, int[][] groups, int[][] candidates, int layers, double budget)
    {
        public int Genes => groups.Length;
        public int Choices(int gene) => candidates[gene].Length;
        public double Budget => budget;

        public (double Loss, double Bits) Evaluate(int[] genome)
        {
            double loss = 0, bits = 0;
            for (int g = 0; g < groups.Length; g++)
            {
                int pair = candidates[g][genome[g]];
                foreach (int l in groups[g]) { loss += sensitivity[l][pair]; bits += KvTunerPair.Candidates[pair].MeanBits; }
            }
            return (loss, bits / layers);
        }

        public KvTunerSolution Solution(int[] genome)
        {
            var pairs = new KvTunerPair[layers];
            for (int g = 0; g < groups.Length; g++)
                foreach (int l in groups[g]) pairs[l] = KvTunerPair.Candidates[candidates[g][genome[g]]];
            var (loss, bits) = Evaluate(genome);
            return new KvTunerSolution(pairs, loss, bits);
        }
    }

    private sealed class Individual(int[] genome, double loss, double bits, double budget)
    {
        public int[] Genome { get; } = genome;
        public double Loss { get; } = loss;
        public double Bits { get; } = bits;
        public double Excess { get; } = Math.Max(0, bits - budget);
        public int Rank { get; set; }
        public double Crowding { get; set; }

        /// <summary>Deb's constrained domination.</summary>
        public bool Dominates(Individual o)
        {
            if (Excess > 0 || o.Excess > 0) return Excess < o.Excess;
            return Loss <= o.Loss && Bits <= o.Bits && (Loss < o.Loss || Bits < o.Bits);
        }
    }

    private static List<KvTunerSolution> Nsga2(Problem problem, KvTunerSearchOptions options, IProgress<double>? progress)
    {
        var rng = new Random(options.Seed);
        int n = options.Population, genes = problem.Genes;
        Individual Make(int[] g) { var (l, b) = problem.Evaluate(g); return new Individual(g, l, b, problem.Budget); }
        var population = new List<Individual>(n);
        // Seeds: the cheapest and the richest choice per group, so both ends of the front are present from the start.
        population.Add(Make(new int[genes]));
        population.Add(Make(Enumerable.Range(0, genes).Select(g => problem.Choices(g) - 1).ToArray()));
        while (population.Count < n) population.Add(Make(Enumerable.Range(0, genes).Select(g => rng.Next(problem.Choices(g))).ToArray()));
        Sort(population);
        for (int gen = 0; gen < options.Generations; gen++)
        {
            var offspring = new List<Individual>(n);
            while (offspring.Count < n)
            {
                var a = Tournament(population, rng).Genome;
                var b = Tournament(population, rng).Genome;
                var c1 = new int[genes];
                var c2 = new int[genes];
                for (int g = 0; g < genes; g++)
                {
                    bool swap = rng.Next(2) == 0;
                    c1[g] = swap ? b[g] : a[g];
                    c2[g] = swap ? a[g] : b[g];
                }
                foreach (var child in new[] { c1, c2 })
                {
                    for (int g = 0; g < genes; g++)
                        if (rng.NextDouble() < 1.0 / genes) child[g] = rng.Next(problem.Choices(g));
                    offspring.Add(Make(child));
                }
            }
            var merged = population.Concat(offspring).ToList();
            var fronts = Sort(merged);
            population = new List<Individual>(n);
            foreach (var rankFront in fronts)
            {
                if (population.Count + rankFront.Count <= n) { population.AddRange(rankFront); continue; }
                population.AddRange(rankFront.OrderByDescending(i => i.Crowding).Take(n - population.Count));
                break;
            }
            progress?.Report((gen + 1.0) / options.Generations);
        }
        var best = population.Where(i => i.Rank == 0 && i.Excess == 0).ToList();
        if (best.Count == 0) throw new KvSharpException($"KVTuner search: no configuration within {options.Budget} mean bits was found");
        // Configurations with the same objectives (up to rounding) are one point of the front: keep the first found.
        var front = new List<KvTunerSolution>();
        foreach (var s in best.Select(i => problem.Solution(i.Genome)).OrderBy(s => s.MeanBits).ThenBy(s => s.Loss))
            if (front.Count == 0 || !Same(front[^1], s)) front.Add(s);
        return front;
    }

    private static bool Same(KvTunerSolution a, KvTunerSolution b) =>
        Math.Abs(a.MeanBits - b.MeanBits) <= 1e-9 && Math.Abs(a.Loss - b.Loss) <= 1e-12 * Math.Max(1, Math.Abs(a.Loss));

    private static Individual Tournament(List<Individual> population, Random rng)
    {
        var a = population[rng.Next(population.Count)];
        var b = population[rng.Next(population.Count)];
        if (a.Rank != b.Rank) return a.Rank < b.Rank ? a : b;
        return a.Crowding >= b.Crowding ? a : b;
    }

    /// <summary>Fast non-dominated sort; sets ranks and crowding distances and returns the fronts in rank order.</summary>
    private static List<List<Individual>> Sort(List<Individual> all)
    {
        int m = all.Count;
        var dominatedBy = new int[m];
        var dominates = new List<int>[m];
        var fronts = new List<List<Individual>>();
        var current = new List<int>();
        for (int i = 0; i < m; i++)
        {
            dominates[i] = new List<int>();
            for (int j = 0; j < m; j++)
            {
                if (i == j) continue;
                if (all[i].Dominates(all[j])) dominates[i].Add(j);
                else if (all[j].Dominates(all[i])) dominatedBy[i]++;
            }
            if (dominatedBy[i] == 0) current.Add(i);
        }
        int rank = 0;
        while (current.Count > 0)
        {
            var front = current.Select(i => all[i]).ToList();
            foreach (var ind in front) ind.Rank = rank;
            Crowding(front);
            fronts.Add(front);
            var next = new List<int>();
            foreach (int i in current)
                foreach (int j in dominates[i])
                    if (--dominatedBy[j] == 0) next.Add(j);
            current = next;
            rank++;
        }
        return fronts;
    }

    private static void Crowding(List<Individual> front)
    {
        foreach (var i in front) i.Crowding = 0;
        foreach (var objective in new Func<Individual, double>[] { i => i.Loss, i => i.Bits })
        {
            var sorted = front.OrderBy(objective).ToList();
            double span = objective(sorted[^1]) - objective(sorted[0]);
            sorted[0].Crowding = sorted[^1].Crowding = double.PositiveInfinity;
            if (span <= 0) continue;
            for (int k = 1; k < sorted.Count - 1; k++)
                sorted[k].Crowding += (objective(sorted[k + 1]) - objective(sorted[k - 1])) / span;
        }
    }
}
