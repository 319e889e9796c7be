module fixture/classicleak-fixed

go 1.21
