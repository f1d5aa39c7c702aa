"""The grading policy: the latent_dim each task is graded at (the grader's decision, never the student's
process's), and one task's grade from the arrays the phases wrote and the grader checked, bounded by what
the code supports (integrity.py's measures), with the flags that say why."""
import ast

from tools.autograde.integrity import (COPY_FRACTION, LEGIBILITY_FLOOR, PERTURBATION, REAL_IMAGE_CHECKED,
                                       ROUNDING_POINTS, BYPASS_TOLERANCE, bound_by_decode, copy_check, legibility,
                                       perturbation_check, real_image_share)


def source_latent_dim(text: str, class_name: str):
    """The int default of `latent_dim` in class_name's constructor, read with ast (no code runs):
    the class's own __init__, else the first base class defined in the file that has one; an alias
    `GenModel = CVAE` is followed, and so is a module-level constant (`LATENT_DIM = 24` ...
    `latent_dim: int = LATENT_DIM`, assigned once in the file). None when there is no int default."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    classes, aliases, constants, assigned = {}, {}, {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = node
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else []
        for target in targets:
            if isinstance(target, ast.Name):
                assigned[target.id] = assigned.get(target.id, 0) + 1
                if isinstance(node.value, ast.Name):
                    aliases[target.id] = node.value.id
                elif isinstance(node.value, ast.Constant) and type(node.value.value) is int:
                    constants[target.id] = node.value.value
    seen = set()

    def find(name):
        while name in aliases and name not in classes and name not in seen:
            seen.add(name)
            name = aliases[name]
        node = classes.get(name)
        if node is None or name in seen - set(aliases):
            return None
        seen.add(name)
        init = next((item for item in node.body if isinstance(item, ast.FunctionDef) and item.name == "__init__"),
                    None)
        if init is None:
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in classes and base.id not in seen:
                    return find(base.id)
            return None
        args = init.args
        positional = args.posonlyargs + args.args
        defaults = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults))
        defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
        default = defaults.get("latent_dim")
        if isinstance(default, ast.Constant) and type(default.value) is int:
            return default.value
        if isinstance(default, ast.Name) and assigned.get(default.id) == 1:  # a constant the file sets once
            return constants.get(default.id)
        return None
    return find(class_name)


def silent(iterable, **_):
    """grade.grade_arrays' progress, drawn by nothing: the grader prints one line per phase."""
    return iterable


def grade_task(task, entry, recon, decoded, batch, flags):
    """The grade of one task from the checked arrays (recon from forward; decoded: split_decoded's
    verified and perturbed reconstructions and samples), bounded by what the code supports: first the
    decode of codes moved a little (perturbation), then decode(mu) itself (bypass); the FID term needs
    samples that are not copies and that read as their label."""
    from grade import grade, grade_arrays
    latent_dim, samples = entry["latent_dim"], decoded["samples"]

    def measured(images):
        return grade_arrays(task, batch.images, batch.labels, images, samples, latent_dim, progress=silent)
    forward, verified, perturbed = measured(recon), measured(decoded["verified"]), measured(decoded["perturbed"])
    for name, result in (("forward", forward), ("verified", verified), ("perturbed", perturbed)):
        entry[name] = {k: result[k] for k in ("ssim", "mse", "score")}
    code = perturbation_check(verified, perturbed)
    entry["perturbation_check"] = code
    supported, supported_name = verified, "verified decode"
    if code["flagged"]:
        supported, supported_name = perturbed, "perturbed decode"
        flags.append({"flag": "code-beyond-latent-dim", "task": task,
                      "evidence": f"moving each code by {PERTURBATION} x its spread drops the decode's grade by "
                                  f"{100 * code['relative_drop']:.0f}% (from {verified['score_uncapped']:.2f} to "
                                  f"{perturbed['score_uncapped']:.2f}; an honest decoder barely changes): the codes "
                                  f"carry more than {latent_dim} numbers' worth; graded from the perturbed decode"})
        # A code that is an index decodes, once moved, to other real images: looked up, not decoded.
        checked = slice(0, REAL_IMAGE_CHECKED)
        share = real_image_share(decoded["perturbed"][checked], batch.labels[checked], batch.banks,
                                 batch.copy_thresholds)
        code["real_image_share"] = share
        if share > COPY_FRACTION:
            supported = dict(perturbed, ssim=0.0, mse=max(perturbed["mse"], 0.1))
            supported["score"] = grade(task, 0.0, supported["mse"], latent_dim, perturbed.get("fid"))
            supported["score_uncapped"] = grade(task, 0.0, supported["mse"], latent_dim, perturbed.get("fid"),
                                                capped=False)
            supported_name = "perturbed decode, whose images are real ones looked up: no reconstruction term"
            flags.append({"flag": "decode-returns-real-images", "task": task,
                          "evidence": f"{100 * share:.0f}% of the decode of the moved codes are near-copies of real "
                                      f"images (first {REAL_IMAGE_CHECKED} checked): decode looks images up; the "
                                      f"reconstruction terms (SSIM, MSE) count 0"})
    bypass = bound_by_decode(forward, supported, recon, decoded["verified"])
    entry["bypass_check"] = bypass
    # The lower of the two counts, always: a forward a little better than its decode, within the flag's
    # tolerance, earns nothing by it either. (Honest models: the same arrays, or a grey level apart in a
    # pixel or two, within ROUNDING_POINTS; sampling in eval: forward lower.)
    graded, entry["graded_from"] = forward, "forward"
    if code["flagged"] or supported["score_uncapped"] < forward["score_uncapped"] - ROUNDING_POINTS:
        graded, entry["graded_from"] = supported, supported_name
    if bypass["flagged"]:
        flags.append({"flag": "recon-bypasses-code", "task": task,
                      "evidence": f"forward grades {forward['score_uncapped']:.2f} (SSIM {forward['ssim']:.3f}, MSE "
                                  f"{forward['mse']:.5f}), more than {100 * BYPASS_TOLERANCE:.0f}% above what the "
                                  f"{supported_name} of its own codes gets, {supported['score_uncapped']:.2f} (SSIM "
                                  f"{supported['ssim']:.3f}, MSE {supported['mse']:.5f}); graded from the "
                                  f"{supported_name}; most different images: "
                                  + ", ".join(f"#{d['image']} (MSE {d['mse']:.4f})" for d in bypass["most_different"])})
    entry.update({key: graded[key] for key in ("ssim", "mse", "bonus", "score", "score_uncapped")})
    if samples is None:
        return
    entry["fid"] = graded["fid"]
    entry["fid_per_label"] = graded["fid_per_label"]
    copies = copy_check(samples, batch.banks, batch.copy_thresholds)
    entry["copy_check"] = copies
    readable = legibility(samples, batch.classifier)
    entry["legibility"] = readable
    reasons = []
    if copies["flagged"]:
        reasons.append("copied-samples")
        flags.append({"flag": "copied-samples", "task": task,
                      "evidence": f"{copies['copies']} of {copies['samples']} samples "
                                  f"({100 * copies['fraction']:.1f}%) lie nearer to a real image than real held-out "
                                  f"digits of their label come to the training set (thresholds "
                                  f"{min(copies['thresholds']):.4f} to {max(copies['thresholds']):.4f}); FID term "
                                  f"zeroed; e.g. "
                                  + ", ".join(f"sample {e['sample']} (label {e['label']}) = {e['split']} image "
                                              f"#{e['image']} shifted {tuple(e['shift'])} at {e['distance']:.5f}"
                                              for e in copies["examples"])})
    if readable["flagged"] and graded["fid"] < 10:
        reasons.append("illegible-samples")
        flags.append({"flag": "illegible-samples", "task": task,
                      "evidence": f"the classifier reads {100 * readable['overall']:.0f}% of the samples as their "
                                  f"label (honest models: 97 to 99%; floor {100 * LEGIBILITY_FLOOR:.0f}%), while "
                                  f"their simplified FID is {graded['fid']:.2f}: they match the pixel statistics "
                                  f"without being digits; FID term zeroed"})
    if reasons:
        entry["fid_term_zeroed"] = reasons
        entry["score"] = grade(task, entry["ssim"], entry["mse"], latent_dim, max(entry["fid"], 10.0))
        entry["score_uncapped"] = grade(task, entry["ssim"], entry["mse"], latent_dim, max(entry["fid"], 10.0),
                                        capped=False)
